"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): Qwen2-VL's adapter, tokens and chat format; its
temporal groups are spaced `tokens_per_second` x seconds per group apart in M-RoPE time.

Smallest checkpoint: Qwen/Qwen2.5-VL-3B-Instruct, 36 layers, 2 KV heads, head dim 128 (hidden 2048 / 16
heads, from its config.json)."""

from __future__ import annotations

from dataclasses import replace

from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.families import qwen2_vl
from potwatch.models.family import DemoSpec
from potwatch.models.positions import MRopePositions


def positions(adapter, fps: float) -> MRopePositions:
    """Qwen2.5-VL spaces temporal groups by tokens_per_second x seconds per group."""
    seconds_per_group = adapter.frames_per_group / fps
    return MRopePositions(time_step=adapter.model.config.vision_config.tokens_per_second * seconds_per_group)


def demo_config(spec: DemoSpec, tokenizer):
    from transformers import Qwen2_5_VLConfig

    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=spec.heads * spec.head_dim,
        window_size=56, fullatt_block_indexes=[1], tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(text_config=qwen2_vl.qwen2_text_config(spec, tokenizer), vision_config=vision,
                            **qwen2_vl.vision_token_ids(tokenizer))


FAMILY = replace(
    qwen2_vl.FAMILY,
    model_type="qwen2_5_vl",
    model_class="transformers.Qwen2_5_VLForConditionalGeneration",
    positions=positions,
    demo_config=demo_config,
    smallest=RealCheckpoint("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", 36, 2, 128, 3),
    demos={"demo-qwen2.5": DemoSpec("qwen2_5_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2.5-VL")},
)
