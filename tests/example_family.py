"""An example family, described the way a new family is added: its own module and one registry entry.

"Example-VL" is the Qwen2-VL architecture under a model_type of its own, so every step of the way goes
through the registry and not through a built-in family's name: transformers learns the config class
(AutoConfig.register), potwatch learns the family (`registered(FAMILY)`), and the demo is built,
saved, loaded by `from_pretrained` from its folder and streamed like any other. It shares Qwen2-VL's
adapter, frame preprocessing, position rule, special tokens and chat template, which a family may."""

from __future__ import annotations

from dataclasses import replace

from transformers import AutoConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from potwatch.models.checkpoints import RealCheckpoint
from potwatch.models.families import qwen2_vl
from potwatch.models.family import DemoSpec

MODEL_TYPE = "potwatch_example_vl"


class ExampleVLConfig(Qwen2VLConfig):
    model_type = MODEL_TYPE


class ExampleVLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    config_class = ExampleVLConfig


AutoConfig.register(MODEL_TYPE, ExampleVLConfig, exist_ok=True)


def demo_config(spec: DemoSpec, tokenizer) -> ExampleVLConfig:
    vision = dict(depth=2, embed_dim=64, hidden_size=spec.heads * spec.head_dim, num_heads=2, mlp_ratio=2)
    return ExampleVLConfig(text_config=qwen2_vl.qwen2_text_config(spec, tokenizer), vision_config=vision,
                           **qwen2_vl.vision_token_ids(tokenizer))


FAMILY = replace(
    qwen2_vl.FAMILY,
    model_type=MODEL_TYPE,
    model_class=f"{__name__}.ExampleVLForConditionalGeneration",
    demo_config=demo_config,
    smallest=RealCheckpoint(MODEL_TYPE, "example/Example-VL-2B", 28, 2, 128, 3),
    # the same shape as `demo`, so the same seed gives the same weights and the same answers
    demos={"demo-example": DemoSpec(MODEL_TYPE, 2, 2, 4, 16, 128, (2, 3, 3), "tiny Example-VL")},
)
