"""Configs of the SmolVLM2 demo models: a SmolVLM (SigLIP-like) tower with pixel shuffle 4 and a Llama
language model, both tiny.

Like SmolVLM2-256M, frames become a square grid of patches that the connector pixel-shuffles by 4 per
side: 128 px / 8 px patches → 4 x 4 = 16 tokens per frame for the tiny model, and the real
512 px / 16 px → 8 x 8 = 64 tokens for the 256m one."""

from __future__ import annotations

from transformers import SmolVLMConfig

from potwatch.models.demo_tokenizer import SMOLVLM_SPECIAL_TOKENS


def smolvlm_demo_config(spec, tokenizer) -> SmolVLMConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SMOLVLM_SPECIAL_TOKENS}
    text = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=spec.heads * spec.head_dim,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=16384,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=spec.vision.get("layers", 2),
        num_attention_heads=2,
        image_size=spec.vision["image_size"],
        patch_size=spec.vision["patch_size"],
    )
    return SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<image>"],
        scale_factor=spec.vision["scale_factor"],
        pad_token_id=ids["<|endoftext|>"],
    )
