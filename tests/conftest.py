"""Shared fixtures: demo models are built once per test run (they are deterministic), on the device
`POTWATCH_TEST_DEVICE` names (default cpu; see tests/device.py for the switch and the tolerances)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

# tests/device.py sets CUDA_VISIBLE_DEVICES and TRITON_INTERPRET for a CPU run before torch is imported
from tests.device import (  # noqa: E402
    EMBED, EXACT, KERNEL, ON_CUDA, QUERY, ROTATION, SWITCH, TEST_DEVICE, assert_close, deviation_summary,
    device_problem, exact_float32, load_test_model, on_device, write_deviations,
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

__all__ = ["EMBED", "EXACT", "KERNEL", "QUERY", "ROTATION", "TEST_DEVICE", "assert_close", "load_test_model",
           "on_device", "random_frames"]


def pytest_configure(config):
    problem = device_problem()
    if problem:
        raise pytest.UsageError(problem)  # one line, before any test is collected
    if ON_CUDA:
        exact_float32()


def pytest_report_header(config):
    return f"{SWITCH}: {TEST_DEVICE}" + (" (float32 matmuls without TF32)" if ON_CUDA else "")


def pytest_terminal_summary(terminalreporter):
    """How much of each tolerance the run used, when the switch was set: the figures that check the
    CUDA tolerances when a GPU is lent (benchmarks/device_check.sh keeps them)."""
    if SWITCH not in os.environ:
        return
    lines = deviation_summary()
    if lines:
        terminalreporter.write_line(f"{SWITCH}={TEST_DEVICE}: the largest differences the exactness checks saw")
        for line in lines:
            terminalreporter.write_line(f"  {line}")


def pytest_sessionfinish(session):
    """POTWATCH_TEST_DEVIATIONS=path: the same figures as JSON (also after an interrupted run)."""
    if os.environ.get("POTWATCH_TEST_DEVIATIONS"):
        write_deviations(os.environ["POTWATCH_TEST_DEVIATIONS"])


@pytest.fixture(scope="session")
def demo_adapter():
    return load_test_model("demo")


@pytest.fixture(scope="session")
def demo25_adapter():
    return load_test_model("demo-qwen2.5")


def random_frames(count: int, seed: int = 0, size: tuple[int, int] = (240, 320)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def frames():
    return random_frames(8)
