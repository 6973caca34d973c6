"""Measure the two thresholds of change-aware ingest (`--ingest changed`) on the synthetic world's streams.

For each group of frames against the one before it: the largest change of a 16-pixel tile's mean once
the frame's gain is scaled out (streaming/repeat_frames.py: below its threshold the tower is skipped),
and each visual token's relative L2 change against the same patch (streaming/change_filter.py: above its
threshold a token is sent). Groups are split into quiet ones and those where an event came or went; a
threshold works when quiet groups stay below it and event groups pass it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ingest_thresholds.py --model tiny --streams 6
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

import numpy as np
import torch

from potwatch.models.registry import load_model
from potwatch.streaming.repeat_frames import tile_change, tile_means
from potwatch.world.render import render_sampled
from potwatch.world.stream import random_stream


def token_changes(adapter, groups) -> list[torch.Tensor]:
    """Per group after the first: each visual token's relative L2 change against the group before."""
    positions = adapter.new_positions(2.0)
    changes, previous = [], None
    with torch.no_grad():
        for index, frames in enumerate(groups):
            embeds = adapter.vision_block(frames, index * len(frames), positions).embeds[0].float()
            if previous is not None:
                changes.append((embeds - previous).norm(dim=1) / previous.norm(dim=1).clamp_min(1e-6))
            previous = embeds
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    adapter = load_model(args.model)
    step = adapter.frames_per_group
    for noise in (0.0, 0.5, 1.0):
        quiet_tiles, event_tiles, quiet_tokens, event_tokens = [], [], [], []
        for index in range(args.streams):
            stream = replace(random_stream(random.Random(f"ingest-thresholds:{index}"), seconds=args.seconds),
                             distractors=(), jitter=0, noise=noise)
            frames = render_sampled(stream)
            groups = [frames[k:k + step] for k in range(0, len(frames) - step + 1, step)]
            means = [tile_means(group) for group in groups]
            for g, change in enumerate(token_changes(adapter, groups), start=1):
                times = [(g * step + k) / 2.0 for k in range(step)]
                before = (g - 1) * step / 2.0
                event = any(e.visible_at(t) != e.visible_at(before) for e in stream.events for t in times)
                (event_tiles if event else quiet_tiles).append(tile_change(means[g], means[g - 1]))
                (event_tokens if event else quiet_tokens).append(float(change.max()))
        print(f"noise {noise}: tile change quiet p50 {np.median(quiet_tiles):.2f} max {max(quiet_tiles):.2f}, "
              f"event min {min(event_tiles):.1f} | largest token change quiet p50 {np.median(quiet_tokens):.3f} "
              f"p99 {np.percentile(quiet_tokens, 99):.3f} max {max(quiet_tokens):.3f}, event min {min(event_tokens):.3f} "
              f"({len(quiet_tiles)} quiet groups, {len(event_tiles)} with an event coming or going)")


if __name__ == "__main__":
    main()
