"""The real loading path: `from_pretrained` on a local checkpoint folder (a demo model saved to disk)."""

from __future__ import annotations

import pytest
import torch

from potwatch import StreamSession, load_model
from potwatch.errors import ModelLoadError
from potwatch.models.registry import save_demo
from tests.conftest import random_frames
from tests.device import load_test_model


def test_a_saved_demo_loads_through_from_pretrained_and_answers_the_same(tmp_path, demo_adapter):
    folder = save_demo("demo", tmp_path / "demo-checkpoint")
    loaded = load_test_model(str(folder))
    assert loaded.is_demo and loaded.family == "qwen2_vl"
    assert loaded.processor == demo_adapter.processor
    assert loaded.geometry() == demo_adapter.geometry()
    for name, tensor in demo_adapter.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    answers = []
    for adapter in (demo_adapter, loaded):
        session = StreamSession(adapter, mem_cap="1MB", max_new_tokens=5)
        session.feed(random_frames(4, seed=9))
        answers.append(session.ask("what?").text)
    assert answers[0] == answers[1]


def test_bfloat16_halves_the_bytes_per_token():
    adapter = load_model("demo", dtype="bfloat16")
    assert adapter.geometry().kv_bytes_per_token * 2 == load_model("demo", dtype="float32").geometry().kv_bytes_per_token


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="it has no config.json"):
        load_model(str(tmp_path))


def test_an_unknown_name_and_dtype():
    with pytest.raises(ModelLoadError, match="Cannot load model"):
        load_model("nobody/no-such-model")
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        load_model("demo", dtype="int3")


def test_each_family_is_described_once_and_registered_once():
    from potwatch.models.families import qwen2_vl
    from potwatch.models.family import DEMO_SPECS, families, register, supported_types

    assert supported_types() == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "smolvlm")
    assert sorted(DEMO_SPECS) == sorted(name for family in families() for name in family.demos)
    assert all(spec.family == family.model_type for family in families() for spec in family.demos.values())
    with pytest.raises(ValueError, match="registered already"):
        register(qwen2_vl.FAMILY)
