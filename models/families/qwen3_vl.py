"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): interleaved M-RoPE, DeepStack, a text timestamp before
each temporal group, 16 px patches normalised with mean = std = 0.5.

Smallest checkpoint: Qwen/Qwen3-VL-2B-Instruct, 28 layers, 8 KV heads, head dim 128 (hidden 2048 / 16
heads), mrope_section [24, 20, 20] interleaved, DeepStack into layers 0-2 from vision layers [5, 11, 17].

The demo models: a Qwen3-VL vision tower with DeepStack mergers and a Qwen3 language model with
interleaved M-RoPE, both tiny. Qwen3's attention has an explicit head dim, so `demo-qwen3-2b` keeps
Qwen3-VL-2B's 28 layers x 8 KV heads x 128 head dim (and its mrope_section) on a 64-wide residual stream."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from potwatch.models.chat_templates import QWEN3_VL_TEMPLATE
from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.families import qwen2_vl
from potwatch.models.family import DemoSpec
from potwatch.models.family_processors import QWEN3_FRAME_MAX_PIXELS, qwen_frames
from potwatch.models.positions_qwen3 import Qwen3Positions
from potwatch.models.qwen3_vl import Qwen3VLAdapter

HALF = (0.5, 0.5, 0.5)


def demo_config(spec: DemoSpec, tokenizer):
    from transformers import Qwen3VLConfig

    ids = qwen2_vl.token_ids(tokenizer)
    rope = {"rope_theta": 5000000.0, "mrope_section": list(spec.mrope_section), "mrope_interleaved": True}
    text = spec.text_config(len(tokenizer), 262144, rope, bos=ids["<|endoftext|>"], eos=ids["<|im_end|>"],
                            pad=ids["<|endoftext|>"], head_dim=spec.head_dim)
    vision = dict(
        depth=spec.vision["depth"],
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=text["hidden_size"],
        num_position_embeddings=64,  # an 8 x 8 learned grid, interpolated to each frame's grid
        deepstack_visual_indexes=list(range(spec.vision["deepstack"])),
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, **qwen2_vl.vision_token_ids(tokenizer))


FAMILY = replace(
    qwen2_vl.FAMILY,
    model_type="qwen3_vl",
    model_class="transformers.Qwen3VLForConditionalGeneration",
    adapter=Qwen3VLAdapter,
    frame_processor=partial(qwen_frames, real_max_pixels=QWEN3_FRAME_MAX_PIXELS),
    frame_norm=(HALF, HALF),
    positions=lambda adapter, fps: Qwen3Positions(fps),
    demo_config=demo_config,
    chat_template=QWEN3_VL_TEMPLATE,
    smallest=RealCheckpoint("qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", 28, 8, 128, 3),
    demos={
        "demo-qwen3": DemoSpec("qwen3_vl", 3, 2, 4, 16, 128, (2, 3, 3),
                               "tiny Qwen3-VL (interleaved M-RoPE, DeepStack into 2 layers)",
                               vision={"depth": 3, "deepstack": 2}),
        "demo-qwen3-2b": DemoSpec("qwen3_vl", 28, 8, 8, 128, 128, (24, 20, 20),
                                  "Qwen3-VL with the KV geometry of Qwen3-VL-2B",
                                  vision={"depth": 3, "deepstack": 3}, hidden=64),
    },
)
