"""A family added from outside models/ (tests/example_family.py) works end to end through the registry:
listed, built, saved, loaded by `from_pretrained` from its folder, streamed and answered; and it is gone
again once unregistered."""

from __future__ import annotations

import pytest
import torch

from potwatch.errors import ModelLoadError

from potwatch.models.family import registered, smallest_checkpoints, supported_types
from potwatch.models.registry import demo_names, load_model, save_demo
from potwatch.streaming.session import StreamSession
from tests import example_family
from tests.conftest import random_frames
from tests.device import load_test_model


def _answer(adapter) -> str:
    session = StreamSession(adapter, mem_cap="1MB", max_new_tokens=5)
    session.feed(random_frames(4, seed=9))
    return session.ask("what?").text


def test_an_example_family_is_built_saved_loaded_and_streamed_through_the_registry(tmp_path, demo_adapter):
    with registered(example_family.FAMILY):
        assert example_family.MODEL_TYPE in supported_types() and "demo-example" in demo_names()
        assert example_family.FAMILY.smallest in smallest_checkpoints()
        built = load_test_model("demo-example")
        folder = save_demo("demo-example", tmp_path / "example-checkpoint")
        loaded = load_test_model(str(folder))
        assert type(loaded.model) is example_family.ExampleVLForConditionalGeneration
        assert loaded.family == example_family.MODEL_TYPE and loaded.is_demo
        assert loaded.description is example_family.FAMILY
        assert loaded.processor == built.processor and loaded.geometry() == built.geometry()
        for name, tensor in built.model.state_dict().items():
            assert torch.equal(tensor, loaded.model.state_dict()[name]), name
        # Qwen2-VL's architecture, shape and seed under another name: the built-in `demo`'s answer
        answers = {_answer(adapter) for adapter in (built, loaded, demo_adapter)}
        assert len(answers) == 1 and answers.pop()
    assert example_family.MODEL_TYPE not in supported_types() and "demo-example" not in demo_names()
    assert example_family.FAMILY.smallest not in smallest_checkpoints()
    with pytest.raises(ModelLoadError, match="potwatch supports"):
        load_model(str(folder))
