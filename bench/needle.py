"""Needle probe: stream the kitchen scene, whose short red-box event is the needle, under a cap that
holds 1/8 of its visual tokens, then count what each policy still holds at the end (over layers and KV
heads): the event frames' tokens, the box's own patches, the moving objects' patches and the static
background's.

Which patch shows what is found from pixels, not guessed: the box is what differs from the same frame
rendered with the event moved elsewhere, and the moving objects are what differs from the median
(static) frame."""

from __future__ import annotations

import numpy as np
import torch

from potwatch.bench.configurations import compressing_policies, configuration
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from potwatch.world.demo_scene import event_window, render_frame

STATIC, MOVING, EVENT = 0, 1, 2
CLASS_NAMES = ("static", "moving", "event")
PIXEL_THRESHOLD = 30  # max channel difference that counts a pixel as changed
CELL_SHARE = 0.05  # share of a patch's pixels that must change for the patch to count as showing it


def needle_video(seconds: float, fps: float, size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray], set[int]]:
    """(frames, the same frames without the event, indices of the event frames)."""
    count = int(round(seconds * fps))
    start, end = event_window(seconds)
    elsewhere = 10 * seconds + 100  # a video this long has its event far past every frame here
    frames = [render_frame(i / fps, size, seconds) for i in range(count)]
    quiet = [render_frame(i / fps, size, elsewhere) for i in range(count)]
    return frames, quiet, {i for i in range(count) if start <= i / fps < end}


def patch_classes(frames, quiet, frames_per_group: int, grid: tuple[int, int]) -> np.ndarray:
    """Class (static, moving, event) of every patch [groups, rows, cols]; a group takes its frames' worst."""
    rows, cols = grid
    background = np.median(np.stack(quiet), axis=0).astype(np.int16)
    height, width = frames[0].shape[:2]
    row_edges = np.linspace(0, height, rows + 1).round().astype(int)
    col_edges = np.linspace(0, width, cols + 1).round().astype(int)
    groups = len(frames) // frames_per_group
    table = np.zeros((groups, rows, cols), dtype=np.int64)
    for index in range(groups * frames_per_group):
        frame, still = frames[index].astype(np.int16), quiet[index].astype(np.int16)
        event = np.abs(frame - still).max(axis=2) > PIXEL_THRESHOLD
        moving = np.abs(still - background).max(axis=2) > PIXEL_THRESHOLD
        for mask, label in ((moving, MOVING), (event, EVENT)):
            share = _cell_share(mask, row_edges, col_edges)
            cells = table[index // frames_per_group]
            cells[(share >= CELL_SHARE) & (cells < label)] = label
    return table


def _cell_share(mask: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray) -> np.ndarray:
    rows, cols = len(row_edges) - 1, len(col_edges) - 1
    share = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            share[r, c] = mask[row_edges[r]:row_edges[r + 1], col_edges[c]:col_edges[c + 1]].mean()
    return share


def kept_counts(cache, table: torch.Tensor, event_groups: torch.Tensor, frames_per_group: int) -> dict[str, int]:
    """Tokens held now, over layers and heads, per patch class and in the event groups."""
    counts = {name: 0 for name in CLASS_NAMES}
    counts["event_frames"] = 0
    counts["visual"] = 0
    device = cache.layers[0].meta["frame"].device
    table, event_groups = table.to(device), event_groups.to(device)
    for layer in cache.layers:
        n = layer.length
        vision = layer.meta["kind"][:, :n] == TokenKind.VISION
        group = layer.meta["frame"][:, :n][vision].long() // frames_per_group
        row = layer.meta["row"][:, :n][vision].long()
        col = layer.meta["col"][:, :n][vision].long()
        patch = row >= 0  # not the text some families wrap a frame in (SmolVLM2's timestamps: row -1)
        classes = torch.bincount(table[group[patch], row[patch], col[patch]], minlength=3)
        for i, name in enumerate(CLASS_NAMES):
            counts[name] += int(classes[i])
        counts["event_frames"] += int(torch.isin(group, event_groups).sum())
        counts["visual"] += int(group.numel())
    return counts


def needle_probe(adapter, seconds: float, fps: float = 2.0, size: tuple[int, int] = (320, 240),
                 share: float = 1 / 8, policies=None) -> dict:
    """Share of each kind of token still held at the end of the stream, per policy (default: every
    compressing policy the registry knows)."""
    policies = compressing_policies() if policies is None else policies
    frames, quiet, event_frames = needle_video(seconds, fps, size)
    probe = StreamSession(adapter, mem_cap=None, policy="none", fps=fps)
    system = probe.system_tokens
    probe.close()
    per_group = adapter.tokens_per_group(size[1], size[0])
    step = adapter.frames_per_group
    groups = len(frames) // step
    frames = frames[: groups * step]
    visual_total = groups * per_group
    capacity = system + int(np.ceil(share * visual_total))
    geometry = adapter.geometry()
    cap_bytes = geometry.bytes_for(capacity)
    heads = geometry.layers * geometry.kv_heads
    grid = token_grid(adapter, size)
    table = torch.from_numpy(patch_classes(frames, quiet, step, grid))
    event_groups = torch.tensor(sorted({i // step for i in event_frames if i < len(frames)}))
    totals = {n: int((table == i).sum()) * heads for i, n in enumerate(CLASS_NAMES)}
    totals["event_frames"] = len(event_groups) * per_group * heads
    totals["visual"] = visual_total * heads
    results = {}
    for name in policies:
        policy, kv_bits = configuration(name)  # the same byte cap: fewer bits hold more tokens
        session = StreamSession(adapter, mem_cap=cap_bytes, policy=policy, fps=fps, max_new_tokens=1, kv_bits=kv_bits)
        session.feed(frames)
        kept = kept_counts(session.cache, table, event_groups, step)
        results[name] = {f"{key}_kept": kept[key] / totals[key] if totals[key] else None for key in totals}
        results[name]["compressions"] = session.monitor.event_count
        session.close()
    return {
        "seconds": seconds,
        "frames": len(frames),
        "event_frames": sorted(event_frames),
        "event_window_s": list(event_window(seconds)),
        "share": share,
        "cap_tokens": capacity,
        "cap_bytes": cap_bytes,
        "grid": list(grid),
        "patches": {n: int((table == i).sum()) for i, n in enumerate(CLASS_NAMES)},
        "policies": results,
    }


def token_grid(adapter, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of language-model tokens per temporal group for frames of `size` (width, height)."""
    side = getattr(adapter, "grid_side", None)
    if side is not None:  # LLaVA-OneVision, SmolVLM2: every frame is resized to one square grid of tokens
        return side, side
    processor = adapter.processor
    grid_h, grid_w = processor.grid_for(size[1], size[0])
    return grid_h // processor.merge_size, grid_w // processor.merge_size
