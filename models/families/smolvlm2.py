"""SmolVLM2 (`SmolVLMForConditionalGeneration`, model_type "smolvlm"; Idefics3 family): SigLIP tower,
pixel-shuffle connector, Llama language model with 1-D RoPE, a timestamp line before each frame.

Smallest checkpoint: HuggingFaceTB/SmolVLM2-256M-Video-Instruct, built on SmolVLM-256M-Instruct, whose LM
is SmolLM2-135M (config.json: num_hidden_layers 30, num_key_value_heads 3, hidden_size 576 /
num_attention_heads 9 = head dim 64); SigLIP base 512 px / 16 px, pixel shuffle 4 → 64 image tokens a
frame (processor_config.json: image_seq_len 64; preprocessor_config.json: max_image_size 512,
video_sampling.video_size.longest_edge 512).

The demo models, like SmolVLM2-256M, turn frames into a square grid of patches that the connector
pixel-shuffles by 4 per side: 128 px / 8 px patches → 4 x 4 = 16 tokens per frame for the tiny model, and
the real 512 px / 16 px → 8 x 8 = 64 tokens for the 256m one."""

from __future__ import annotations

from potwatch.models.chat_templates import SMOLVLM_TEMPLATE
from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.family import DemoSpec, Family
from potwatch.models.family_processors import smolvlm_processor, smolvlm_saved_settings
from potwatch.models.positions_1d import FrameClockPositions
from potwatch.models.smolvlm import SmolVLMAdapter

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
)


def demo_config(spec: DemoSpec, tokenizer):
    from transformers import SmolVLMConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = spec.text_config(len(tokenizer), 16384, {"rope_theta": 100000.0}, bos=ids["<|im_start|>"],
                            eos=ids["<end_of_utterance>"], pad=ids["<|endoftext|>"], model_type="llama",
                            head_dim=spec.head_dim, rms_norm_eps=1e-5)
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


FAMILY = Family(
    model_type="smolvlm",
    model_class="transformers.SmolVLMForConditionalGeneration",
    adapter=SmolVLMAdapter,
    frame_processor=smolvlm_processor,
    saved_settings=smolvlm_saved_settings,
    positions=lambda adapter, fps: FrameClockPositions(fps),  # 1-D ids; the frames' timestamps need the fps
    pos_rows=1,
    demo_config=demo_config,
    special_tokens=SPECIAL_TOKENS,
    end_of_turn="<end_of_utterance>",
    chat_template=SMOLVLM_TEMPLATE,
    smallest=RealCheckpoint("smolvlm", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", 30, 3, 64, 1),
    demos={
        "demo-smolvlm": DemoSpec("smolvlm", 2, 2, 4, 16, 128, description="tiny SmolVLM2 (16 image tokens/frame)",
                                 vision={"image_size": 128, "patch_size": 8, "scale_factor": 4}),
        "demo-smolvlm-256m": DemoSpec(
            "smolvlm", 30, 3, 3, 64, 384,
            description="SmolVLM2 with the KV geometry and 64 image tokens/frame of SmolVLM2-256M",
            vision={"image_size": 512, "patch_size": 16, "scale_factor": 4, "layers": 1},
        ),
    },
)
