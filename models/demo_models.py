"""Small random-weight models of the real architectures, built offline from configs.

They make the whole system runnable and testable anywhere. Their weights are random (seeded, so
deterministic) and their answers are meaningless: every answer from a demo model says so.
`demo-2b` has the KV geometry of Qwen2-VL-2B-Instruct (28 layers, 2 KV heads, head dim 128), so byte
caps mean the same as on the real model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from potwatch.models.demo_tokenizer import QWEN_SPECIAL_TOKENS, build_demo_tokenizer

DEMO_SEED = 1234
DEMO_MARK = "potwatch_demo"  # config attribute that marks a demo model, kept through save/load
DEMO_MAX_PIXELS = 224 * 224  # keeps demo frames at ~50 tokens per temporal group


@dataclass(frozen=True)
class DemoSpec:
    family: str  # "qwen2_vl" or "qwen2_5_vl"
    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    description: str = ""
    vision: dict = field(default_factory=dict)


DEMO_SPECS: dict[str, DemoSpec] = {
    "demo": DemoSpec("qwen2_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2-VL for fast tests"),
    "demo-2b": DemoSpec("qwen2_vl", 28, 2, 2, 128, 512, (16, 24, 24), "Qwen2-VL with the KV geometry of Qwen2-VL-2B"),
    "demo-qwen2.5": DemoSpec("qwen2_5_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2.5-VL"),
}


def _token_ids(tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}


def demo_config(name: str, tokenizer):
    spec = DEMO_SPECS[name]
    ids = _token_ids(tokenizer)
    hidden = spec.heads * spec.head_dim
    text = dict(
        vocab_size=320,
        hidden_size=hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(spec.mrope_section)},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if spec.family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=64, hidden_size=hidden, num_heads=2, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    else:
        vision = dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden,
            window_size=56, fullatt_block_indexes=[1], tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    setattr(config, DEMO_MARK, name)
    return config


def build_demo(name: str):
    """(model, tokenizer) for a demo name; same weights every time."""
    tokenizer = build_demo_tokenizer()
    config = demo_config(name, tokenizer)
    model_class = Qwen2VLForConditionalGeneration if DEMO_SPECS[name].family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = model_class(config)
    model.eval()
    return model, tokenizer
