"""What loads, in a fresh interpreter: the command line reads its arguments before it imports any heavy
part (torch, transformers, PyAV, Gradio), and a kernel imports no session, registry or model classes.

Checked by the modules present afterwards rather than by a timing, which a busy machine would make flaky;
`python -X importtime -m potwatch.app.cli --help` shows the time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "av", "gradio", "matplotlib", "cv2", "numpy", "ray")


def loaded_after(code: str) -> set[str]:
    """The module names in sys.modules after `code` runs in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


def help_of(*args: str) -> str:
    return f"""
import contextlib, io
from potwatch.app.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main({list(args)!r} + ["--help"])
    except SystemExit as stop:
        assert stop.code == 0, stop.code
assert "usage: potwatch" in out.getvalue()
"""


@pytest.mark.parametrize("command", [(), ("watch",), ("serve",), ("bench",), ("make-qa",), ("cluster",)],
                         ids=lambda c: " ".join(c) or "potwatch")
def test_help_loads_no_heavy_module(command):
    modules = loaded_after(help_of(*command))
    assert "potwatch.app.cli" in modules  # the probe ran the command line
    heavy = sorted(name for name in HEAVY if name in modules)
    assert not heavy, f"`potwatch {' '.join(command)} --help` imported {heavy}"
    assert not {m for m in modules if m.startswith(("potwatch.streaming", "potwatch.models"))}


def test_a_command_imports_what_it_needs_when_it_runs():
    """The counterpart of the above, so that it can fail for the right reason: running `policies` does load
    the policies (and torch)."""
    modules = loaded_after("from potwatch.app.cli import main\nmain(['policies'])")
    assert {"potwatch.compression.policies.base", "torch"} <= modules


def test_import_potwatch_loads_no_heavy_module():
    modules = loaded_after("import potwatch")
    assert not [name for name in HEAVY if name in modules]


def test_a_kernel_imports_only_torch_and_its_own_part():
    modules = loaded_after("import potwatch.kernels.rope_shift")
    assert "torch" in modules
    for absent in ("transformers", "av", "gradio", "potwatch.streaming.session", "potwatch.models.registry"):
        assert absent not in modules, absent
    assert not {m for m in modules if m.startswith(("potwatch.streaming", "potwatch.models", "potwatch.app",
                                                    "potwatch.bench", "potwatch.compression"))}
