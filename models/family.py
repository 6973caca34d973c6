"""What potwatch knows about one model family, in one place, and the registry of families.

A `Family` names everything that differs from one family to the next: the transformers model class, the
adapter, how frames are preprocessed (and what a saved demo writes back), the position rule, the demo
models and their config builder, the demo tokenizer's special tokens and chat template, and the
smallest real checkpoint. Each family's description lives in its own module under `models/families/`
and is registered there with one line; the registry, the loaders and the demo builders read these
descriptions and never match a family's name. The package's `__init__` imports `models/families/`, so
the built-in families are registered before any module of `potwatch.models` is used, and this module
stays a leaf that the families import.

A family is keyed by its transformers `model_type` (what a checkpoint's config.json says)."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from potwatch.models.checkpoints import RealCheckpoint


@dataclass(frozen=True)
class DemoSpec:
    """A random-weight demo model of a family: its language model's shape and the family's vision settings."""

    family: str  # the family's model_type
    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    intermediate: int
    mrope_section: tuple[int, ...] = ()  # M-RoPE families only
    description: str = ""
    vision: dict = field(default_factory=dict)  # family-specific vision settings
    hidden: int | None = None  # residual width, when not heads x head_dim (Qwen3 has an explicit head dim)

    def text_config(self, vocab_size: int, max_positions: int, rope: dict, bos: int, eos: int, pad: int,
                    **family_fields) -> dict:
        """The demo language model's config fields every family shares (its shape from this spec), plus
        the family's own (`model_type`, `head_dim`, `rms_norm_eps`, ...)."""
        return dict(
            vocab_size=vocab_size,
            hidden_size=self.hidden or self.heads * self.head_dim,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=max_positions,
            rope_parameters={"rope_type": "default", **rope},
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            **family_fields,
        )


@dataclass(frozen=True)
class Family:
    """One model family, described once: what loading, streaming and the demos need to know of it."""

    model_type: str  # transformers config.model_type, the key checkpoints are matched by
    model_class: str  # dotted path of the model class, imported when a checkpoint is loaded
    adapter: type  # a ModelAdapter subclass: (model, tokenizer, processor, name, is_demo, chat_template=...)
    # (checkpoint processor settings, model config, frame_max_pixels or None, is_demo) -> frame processor
    frame_processor: Callable
    saved_settings: Callable  # frame processor -> what `save_demo` writes to preprocessor_config.json
    positions: Callable  # (adapter, fps) -> the stream's position tracker
    pos_rows: int  # rows of position ids: 3 for M-RoPE, 1 for plain RoPE
    demo_config: Callable  # (DemoSpec, demo tokenizer) -> the demo model's config
    special_tokens: tuple[str, ...]  # the demo tokenizer's, padding token first
    end_of_turn: str  # the demo tokenizer's end-of-turn (eos) token
    chat_template: str  # the demo tokenizer's chat template, in the family's own format
    smallest: RealCheckpoint  # the smallest real checkpoint, for `potwatch models`
    demos: dict[str, DemoSpec] = field(default_factory=dict)  # demo name -> spec
    frame_norm: tuple | None = None  # (mean, std) of the family's processor when a checkpoint gives none

    def load_model_class(self):
        module, _, name = self.model_class.rpartition(".")
        return getattr(importlib.import_module(module), name)


_FAMILIES: dict[str, Family] = {}  # model_type -> family, in registration order
DEMO_SPECS: dict[str, DemoSpec] = {}  # every registered family's demos, by name, in registration order


def register(family: Family) -> Family:
    """Add a family (and its demos); a model_type or demo name registered twice is a programming error."""
    if family.model_type in _FAMILIES:
        raise ValueError(f"family {family.model_type!r} is registered already")
    clash = set(family.demos) & set(DEMO_SPECS)
    if clash:
        raise ValueError(f"demo names {sorted(clash)} are registered already")
    _FAMILIES[family.model_type] = family
    DEMO_SPECS.update(family.demos)
    return family


def unregister(model_type: str) -> None:
    family = _FAMILIES.pop(model_type)
    for name in family.demos:
        DEMO_SPECS.pop(name, None)


@contextmanager
def registered(family: Family):
    """`family` registered for the length of a `with` block (a test's example family)."""
    register(family)
    try:
        yield family
    finally:
        unregister(family.model_type)


def families() -> list[Family]:
    """The registered families as potwatch lists them: M-RoPE families first, then plain-RoPE ones, each
    group in the order registered (demo names keep the plain registration order)."""
    return sorted(_FAMILIES.values(), key=lambda family: -family.pos_rows)


def supported_types() -> tuple[str, ...]:
    return tuple(family.model_type for family in families())


def family_for(model_type: str) -> Family | None:
    """The registered family of a model_type, None when potwatch does not support it."""
    return _FAMILIES.get(model_type)


def demo_specs() -> dict[str, DemoSpec]:
    return DEMO_SPECS


def smallest_checkpoints() -> tuple[RealCheckpoint, ...]:
    """Each registered family's smallest real checkpoint, in the order families are listed (for
    `potwatch models`); read afresh, so a family registered later shows at once."""
    return tuple(family.smallest for family in families())
