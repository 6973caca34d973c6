"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): M-RoPE, two frames per temporal group, ChatML.

Smallest checkpoint: Qwen/Qwen2-VL-2B-Instruct, 28 layers, 2 KV heads, head dim 128 (hidden 1536 / 12
heads, from its config.json)."""

from __future__ import annotations

from potwatch.models.chat_templates import QWEN2_VL_TEMPLATE
from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.family import DemoSpec, Family
from potwatch.models.family_processors import qwen_frames, qwen_saved_settings
from potwatch.models.positions import MRopePositions
from potwatch.models.qwen_vl import QwenVLAdapter

# The Qwen families' special tokens (the demo tokenizers' and the trained `tiny`'s), padding token first.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def token_ids(tokenizer, tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}


def qwen2_text_config(spec: DemoSpec, tokenizer) -> dict:
    """The demo language model of Qwen2-VL and Qwen2.5-VL (a byte vocabulary of 320 ids)."""
    ids = token_ids(tokenizer)
    rope = {"rope_theta": 1000000.0, "mrope_section": list(spec.mrope_section)}
    return spec.text_config(320, 32768, rope, bos=ids["<|endoftext|>"], eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])


def vision_token_ids(tokenizer) -> dict[str, int]:
    """The config's ids of the image and video pads and the vision markers."""
    ids = token_ids(tokenizer)
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def demo_config(spec: DemoSpec, tokenizer):
    from transformers import Qwen2VLConfig

    hidden = spec.heads * spec.head_dim
    vision = dict(depth=2, embed_dim=64, hidden_size=hidden, num_heads=2, mlp_ratio=2)
    return Qwen2VLConfig(text_config=qwen2_text_config(spec, tokenizer), vision_config=vision,
                         **vision_token_ids(tokenizer))


FAMILY = Family(
    model_type="qwen2_vl",
    model_class="transformers.Qwen2VLForConditionalGeneration",
    adapter=QwenVLAdapter,
    frame_processor=qwen_frames,
    saved_settings=qwen_saved_settings,
    positions=lambda adapter, fps: MRopePositions(time_step=1.0),  # one id step per temporal group
    pos_rows=3,
    demo_config=demo_config,
    special_tokens=QWEN_SPECIAL_TOKENS,
    end_of_turn="<|im_end|>",
    chat_template=QWEN2_VL_TEMPLATE,
    smallest=RealCheckpoint("qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", 28, 2, 128, 3),
    demos={
        "demo": DemoSpec("qwen2_vl", 2, 2, 4, 16, 128, (2, 3, 3), "tiny Qwen2-VL for fast tests"),
        "demo-2b": DemoSpec("qwen2_vl", 28, 2, 2, 128, 512, (16, 24, 24),
                            "Qwen2-VL with the KV geometry of Qwen2-VL-2B"),
    },
)
