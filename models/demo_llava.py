"""Configs of the LLaVA-OneVision demo models: a SigLIP tower and a Qwen2 language model, both tiny.

The vision input keeps the real model's odd patch grid (image/patch = 7 for the tiny model, 27 for the
0.5b one), so the bilinear pooling to ceil(side / 2) runs the same non-integer resampling as the real
checkpoints (27 → 14: 196 tokens per frame)."""

from __future__ import annotations

from transformers import LlavaOnevisionConfig

from potwatch.models.demo_tokenizer import LLAVA_SPECIAL_TOKENS


def llava_demo_config(spec, tokenizer) -> LlavaOnevisionConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_SPECIAL_TOKENS}
    text = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=spec.heads * spec.head_dim,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=spec.vision.get("layers", 2),
        num_attention_heads=2,
        image_size=spec.vision["image_size"],
        patch_size=spec.vision["patch_size"],
        vision_use_head=False,
    )
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
