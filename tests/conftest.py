"""Shared fixtures: demo models are built once per test run (they are deterministic)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import torch  # noqa: E402  (imports no triton)

if not torch.cuda.is_available():
    # Triton kernels are tested interpreted on CPU tensors (tests/test_kernels_triton.py). triton reads
    # this once, when first imported, and torch imports it early (torch._dynamo), so set it here.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from potwatch.models.registry import load_model


@pytest.fixture(scope="session")
def demo_adapter():
    return load_model("demo")


@pytest.fixture(scope="session")
def demo25_adapter():
    return load_model("demo-qwen2.5")


def random_frames(count: int, seed: int = 0, size: tuple[int, int] = (240, 320)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def frames():
    return random_frames(8)
