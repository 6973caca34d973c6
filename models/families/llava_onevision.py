"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, Qwen2 language model with
1-D RoPE, frames pooled to ceil(side / 2)^2 tokens, a learned image_newline closing each video.

Smallest checkpoint: llava-hf/llava-onevision-qwen2-0.5b-ov-hf, whose Qwen2-0.5B LM has 24 layers, 2 KV
heads, head dim 64 (hidden 896 / 14 heads); SigLIP 384 px / 14 px patches, pooled to 14 x 14 = 196
tokens a frame.

The demo models keep the real model's odd patch grid (image/patch = 7 for the tiny model, 27 for the
0.5b one), so the bilinear pooling to ceil(side / 2) runs the same non-integer resampling as the real
checkpoints (27 → 14: 196 tokens per frame)."""

from __future__ import annotations

from potwatch.models.chat_templates import LLAVA_ONEVISION_TEMPLATE
from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.family import DemoSpec, Family
from potwatch.models.family_processors import llava_processor, llava_saved_settings
from potwatch.models.llava_onevision import LlavaOnevisionAdapter
from potwatch.models.positions_1d import Positions1D

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def demo_config(spec: DemoSpec, tokenizer):
    from transformers import LlavaOnevisionConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = spec.text_config(len(tokenizer), 32768, {"rope_theta": 1000000.0}, bos=ids["<|endoftext|>"],
                            eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"], model_type="qwen2")
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


FAMILY = Family(
    model_type="llava_onevision",
    model_class="transformers.LlavaOnevisionForConditionalGeneration",
    adapter=LlavaOnevisionAdapter,
    frame_processor=llava_processor,
    saved_settings=llava_saved_settings,
    positions=lambda adapter, fps: Positions1D(),  # one id per token, text and visual alike
    pos_rows=1,
    demo_config=demo_config,
    special_tokens=SPECIAL_TOKENS,
    end_of_turn="<|im_end|>",
    chat_template=LLAVA_ONEVISION_TEMPLATE,
    smallest=RealCheckpoint("llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", 24, 2, 64, 1),
    demos={
        "demo-llava": DemoSpec("llava_onevision", 2, 2, 4, 16, 128, description="tiny LLaVA-OneVision (16 tokens/frame)",
                               vision={"image_size": 98, "patch_size": 14}),
        "demo-llava-0.5b": DemoSpec(
            "llava_onevision", 24, 2, 2, 64, 256,
            description="LLaVA-OneVision with the KV geometry and 196 tokens/frame of llava-onevision-qwen2-0.5b",
            vision={"image_size": 384, "patch_size": 14, "layers": 1},
        ),
    },
)
