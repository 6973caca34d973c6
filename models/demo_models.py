"""Small random-weight models of the real architectures, built offline from configs.

They make the whole system runnable and testable anywhere. Their weights are random (seeded, so
deterministic) and their answers are meaningless: every answer from a demo model says so.
Each family has a tiny demo for fast tests and one with the KV geometry (layers x KV heads x head dim)
of its smallest real checkpoint, so byte caps mean the same as on the real model: `demo-2b`
(Qwen2-VL-2B: 28 x 2 x 128), `demo-llava-0.5b` (llava-onevision-qwen2-0.5b: 24 x 2 x 64),
`demo-smolvlm-256m` (SmolVLM2-256M: 30 x 3 x 64) and `demo-qwen3-2b` (Qwen3-VL-2B: 28 x 8 x 128)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    SmolVLMForConditionalGeneration,
)

from potwatch.models.chat_templates import FAMILY_TEMPLATES
from potwatch.models.demo_llava import llava_demo_config
from potwatch.models.demo_qwen3 import qwen3_demo_config
from potwatch.models.demo_smolvlm import smolvlm_demo_config
from potwatch.models.demo_tokenizer import (
    LLAVA_SPECIAL_TOKENS,
    QWEN_SPECIAL_TOKENS,
    SMOLVLM_SPECIAL_TOKENS,
    build_demo_tokenizer,
)

DEMO_SEED = 1234
DEMO_MARK = "potwatch_demo"  # config attribute that marks a demo model, kept through save/load
DEMO_MAX_PIXELS = 224 * 224  # keeps demo frames at ~50 tokens per temporal group


@dataclass(frozen=True)
class DemoSpec:
    family: str  # a transformers model_type: qwen2_vl, qwen2_5_vl, qwen3_vl, llava_onevision, smolvlm
    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    intermediate: int
    mrope_section: tuple[int, ...] = ()  # Qwen only
    description: str = ""
    vision: dict = field(default_factory=dict)  # family-specific vision settings
    hidden: int | None = None  # residual width, when not heads x head_dim (Qwen3 has an explicit head dim)


DEMO_SPECS: dict[str, DemoSpec] = {
    "demo": DemoSpec("qwen2_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2-VL for fast tests"),
    "demo-2b": DemoSpec("qwen2_vl", 28, 2, 2, 128, 512, (16, 24, 24), "Qwen2-VL with the KV geometry of Qwen2-VL-2B"),
    "demo-qwen2.5": DemoSpec("qwen2_5_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2.5-VL"),
    "demo-llava": DemoSpec(
        "llava_onevision", 2, 2, 4, 16, 128, description="tiny LLaVA-OneVision (16 tokens/frame)",
        vision={"image_size": 98, "patch_size": 14},
    ),
    "demo-llava-0.5b": DemoSpec(
        "llava_onevision", 24, 2, 2, 64, 256,
        description="LLaVA-OneVision with the KV geometry and 196 tokens/frame of llava-onevision-qwen2-0.5b",
        vision={"image_size": 384, "patch_size": 14, "layers": 1},
    ),
    "demo-smolvlm": DemoSpec(
        "smolvlm", 2, 2, 4, 16, 128, description="tiny SmolVLM2 (16 image tokens/frame)",
        vision={"image_size": 128, "patch_size": 8, "scale_factor": 4},
    ),
    "demo-smolvlm-256m": DemoSpec(
        "smolvlm", 30, 3, 3, 64, 384,
        description="SmolVLM2 with the KV geometry and 64 image tokens/frame of SmolVLM2-256M",
        vision={"image_size": 512, "patch_size": 16, "scale_factor": 4, "layers": 1},
    ),
    "demo-qwen3": DemoSpec(
        "qwen3_vl", 3, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen3-VL (interleaved M-RoPE, DeepStack into 2 layers)",
        vision={"depth": 3, "deepstack": 2},
    ),
    "demo-qwen3-2b": DemoSpec(
        "qwen3_vl", 28, 8, 8, 128, 128, (24, 20, 20), "Qwen3-VL with the KV geometry of Qwen3-VL-2B",
        vision={"depth": 3, "deepstack": 3}, hidden=64,
    ),
}

# Per family: (special tokens of the demo tokenizer, its end-of-turn token, config builder, model class).
FAMILIES = {
    "qwen2_vl": (QWEN_SPECIAL_TOKENS, "<|im_end|>", None, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (QWEN_SPECIAL_TOKENS, "<|im_end|>", None, Qwen2_5_VLForConditionalGeneration),
    "llava_onevision": (LLAVA_SPECIAL_TOKENS, "<|im_end|>", llava_demo_config, LlavaOnevisionForConditionalGeneration),
    "qwen3_vl": (QWEN_SPECIAL_TOKENS, "<|im_end|>", qwen3_demo_config, Qwen3VLForConditionalGeneration),
    "smolvlm": (SMOLVLM_SPECIAL_TOKENS, "<end_of_utterance>", smolvlm_demo_config, SmolVLMForConditionalGeneration),
}


def _token_ids(tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}


def demo_config(name: str, tokenizer):
    spec = DEMO_SPECS[name]
    builder = FAMILIES[spec.family][2]
    if builder is not None:
        config = builder(spec, tokenizer)
        setattr(config, DEMO_MARK, name)
        return config
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
    family = DEMO_SPECS[name].family
    special_tokens, eos, _, model_class = FAMILIES[family]
    tokenizer = build_demo_tokenizer(special_tokens, eos, FAMILY_TEMPLATES[family])
    config = demo_config(name, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = model_class(config)
    model.eval()
    return model, tokenizer
