"""Small random-weight models of the real architectures, built offline from configs.

They make the whole system runnable and testable anywhere. Their weights are random (seeded, so
deterministic) and their answers are meaningless: every answer from a demo model says so.
Each family declares its demos in its description (models/families/): a tiny demo for fast tests and
one with the KV geometry (layers x KV heads x head dim) of its smallest real checkpoint, so byte caps
mean the same as on the real model: `demo-2b` (Qwen2-VL-2B: 28 x 2 x 128), `demo-llava-0.5b`
(llava-onevision-qwen2-0.5b: 24 x 2 x 64), `demo-smolvlm-256m` (SmolVLM2-256M: 30 x 3 x 64) and
`demo-qwen3-2b` (Qwen3-VL-2B: 28 x 8 x 128)."""

from __future__ import annotations

import torch

from potwatch.models.demo_tokenizer import build_demo_tokenizer
from potwatch.models.family import DemoSpec, demo_specs, family_for
from potwatch.models.family_processors import DEMO_MAX_PIXELS  # noqa: F401 - re-exported

DEMO_SEED = 1234
DEMO_MARK = "potwatch_demo"  # config attribute that marks a demo model, kept through save/load
DEMO_SPECS: dict[str, DemoSpec] = demo_specs()  # every registered family's demos, by name (a live view)


def demo_config(name: str, tokenizer):
    spec = DEMO_SPECS[name]
    config = family_for(spec.family).demo_config(spec, tokenizer)
    setattr(config, DEMO_MARK, name)
    return config


def build_demo(name: str):
    """(model, tokenizer) for a demo name; same weights every time."""
    family = family_for(DEMO_SPECS[name].family)
    tokenizer = build_demo_tokenizer(family.special_tokens, family.end_of_turn, family.chat_template)
    config = demo_config(name, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = family.load_model_class()(config)
    model.eval()
    return model, tokenizer
