"""setup.sh's options, run on a copy of the script in an empty folder: --dry-run prints the commands a
set-up would run, so no test installs anything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def script(tmp_path) -> Path:
    copy = tmp_path / "setup.sh"
    shutil.copy(ROOT / "setup.sh", copy)
    return copy


def setup(script: Path, *args: str, python: str = "python3") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHON": python})


def test_help_names_the_three_set_ups(script):
    result = setup(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: bash setup.sh")
    assert all(option in result.stdout for option in ("--cuda", "--system-torch", "--cluster", "--lmms-eval", "--dry-run"))


@pytest.mark.parametrize("args, words", [
    (["--gpu"], "setup.sh: unknown option '--gpu'; usage: bash setup.sh"),
    (["--cuda=twelve"], "setup.sh: 'twelve' is not a CUDA version; give one like --cuda 12.8."),
    (["--cuda", "--system-torch"], "setup.sh: --cuda and --system-torch exclude each other; give one."),
])
def test_a_bad_option_is_one_sentence_and_exit_code_2(script, args, words):
    result = setup(script, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(words) and len(result.stderr.strip().splitlines()) == 1
    assert not (script.parent / ".venv").exists()


def test_the_default_installs_the_pinned_torch_first(script):
    lines = setup(script, "--dry-run").stdout.splitlines()
    assert lines[0] == "python3 -m venv .venv"
    assert lines[2] == ".venv/bin/python -m pip install --quiet torch==2.13.0"
    assert lines[3] == ".venv/bin/python -m pip install --quiet -e .[dev,ui]"


def test_cluster_adds_the_cluster_extra(script):
    lines = setup(script, "--cluster", "--dry-run").stdout.splitlines()
    assert lines[2] == ".venv/bin/python -m pip install --quiet torch==2.13.0"
    assert lines[3] == ".venv/bin/python -m pip install --quiet -e .[dev,ui,cluster]"


@pytest.mark.parametrize("args, index", [(["--cuda"], "cu128"), (["--cuda", "12.6"], "cu126"), (["--cuda=13.0"], "cu130")])
def test_cuda_takes_pytorchs_build_for_that_cuda_version(script, args, index):
    lines = setup(script, *args, "--dry-run").stdout.splitlines()
    assert lines[2] == (".venv/bin/python -m pip install --quiet torch==2.13.0 --index-url "
                        f"https://download.pytorch.org/whl/{index}")


def test_system_torch_keeps_the_torch_python_already_has(script):
    """This test's own interpreter stands in for the system's python: it has a torch."""
    result = setup(script, "--system-torch", "--dry-run", python=sys.executable)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{sys.executable} -m venv --system-site-packages .venv"
    assert f"torch=={torch.__version__}" in lines[2] and "--constraint" in lines[3]
    assert not any("install --quiet torch" in line for line in lines)


def test_system_torch_without_a_torch_says_what_to_do(script, tmp_path):
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    result = setup(script, "--system-torch", python=str(no_torch))
    assert result.returncode == 1 and "cannot import torch; install your platform's torch first" in result.stderr
    assert not (script.parent / ".venv").exists()


def test_lmms_eval_makes_its_own_venv_with_the_pins(script):
    """torch first, then potwatch's `lmms` extra with torch held by a constraint, then CPU-only: no
    torchvision (PyPI's is a CUDA build that breaks beside CPU torch); .venv is never touched."""
    lines = setup(script, "--lmms-eval", "--dry-run").stdout.splitlines()
    assert lines[0] == "python3 -m venv .venv-lmms"
    assert lines[2] == ".venv-lmms/bin/python -m pip install --quiet torch==2.13.0"
    assert lines[3] == "sh -c echo 'torch==2.13.0' > .venv-lmms/torch.txt"
    assert lines[4] == ".venv-lmms/bin/python -m pip install --quiet -e .[lmms] --constraint .venv-lmms/torch.txt"
    assert lines[5] == ".venv-lmms/bin/python -m pip uninstall --quiet --yes torchvision"
    assert 'get_model("potwatch")' in lines[6]
    assert not any(".venv/" in line or line.endswith(" .venv") for line in lines)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'lmms = ["lmms-eval==0.7.3", "filelock<4", "av<16"]' in pyproject


def test_lmms_eval_with_cuda_keeps_torchvision_from_the_same_index(script):
    lines = setup(script, "--lmms-eval", "--cuda", "12.6", "--dry-run").stdout.splitlines()
    assert lines[2] == (".venv-lmms/bin/python -m pip install --quiet torch==2.13.0 torchvision==0.28.0 "
                        "--index-url https://download.pytorch.org/whl/cu126")
    assert not any("uninstall" in line for line in lines)


def test_lmms_eval_refuses_the_system_torch(script):
    result = setup(script, "--lmms-eval", "--system-torch", python=sys.executable)
    assert result.returncode == 2 and result.stderr.startswith("setup.sh: --lmms-eval installs pip's torch")
    assert not (script.parent / ".venv-lmms").exists()
