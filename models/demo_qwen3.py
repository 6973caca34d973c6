"""Configs of the Qwen3-VL demo models: a Qwen3-VL vision tower with DeepStack mergers and a Qwen3
language model with interleaved M-RoPE, both tiny.

Qwen3's attention has an explicit head dim, so `demo-qwen3-2b` keeps Qwen3-VL-2B's 28 layers x 8 KV
heads x 128 head dim (and its mrope_section [24, 20, 20]) on a 64-wide residual stream."""

from __future__ import annotations

from transformers import Qwen3VLConfig

from potwatch.models.demo_tokenizer import QWEN_SPECIAL_TOKENS


def qwen3_demo_config(spec, tokenizer) -> Qwen3VLConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    hidden = spec.hidden or spec.heads * spec.head_dim
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": list(spec.mrope_section),
                         "mrope_interleaved": True},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision["depth"],
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=hidden,
        num_position_embeddings=64,  # an 8 x 8 learned grid, interpolated to each frame's grid
        deepstack_visual_indexes=list(range(spec.vision["deepstack"])),
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
