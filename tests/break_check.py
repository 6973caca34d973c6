"""Break the code on purpose, once per core claim, and check that the tests named for the claim fail.

Not collected by pytest (no test functions): run it by hand, from the repository root:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python tests/break_check.py [--only NAME ...] [--no-baseline]

It copies the repository (git's tracked and untracked, not ignored, files) to a temporary folder and
makes `potwatch.*` import from that copy: pyproject.toml maps `potwatch.compression` to the top-level
folder `compression/` and so on, which an editable install resolves to THIS checkout, so the copy gets
links `potwatch/compression -> ../compression` etc. and runs with PYTHONPATH pointing at it (Python's
path finder comes before the editable install's finder). Before any run it proves the point: each
module to break, imported as the tests import it (same folder, same environment), is the copy's file.

First the named tests must pass on the unbroken copy (the baseline); then, per break, one small text
substitution in one file, each named test run on its own (`pytest -x`), and the file restored. A break
is caught when every named test fails. The exit status is 0 only when all breaks are caught."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORACLE = "tests/test_eviction_oracle.py"


@dataclass(frozen=True)
class Break:
    name: str
    claim: str
    path: str  # the file broken, relative to the repository root
    old: str  # text that must occur exactly once in it
    new: str
    tests: tuple[str, ...]  # pytest targets, each of which must fail

    @property
    def module(self) -> str:
        """The module the tests import for `path` (compression/budget.py -> potwatch.compression.budget); for
        the C source, the module that builds it from the file beside itself."""
        if self.path.endswith(".c"):
            return "potwatch.kernels.native"
        return "potwatch." + self.path.removesuffix(".py").replace("/", ".")

    def imported_as(self, found: Path, copy: Path) -> bool:
        """`found`, the module's file, is the copy's `path` (for the C source: sits beside it)."""
        target = (copy / self.path).resolve()
        return (found.resolve().parent == target.parent) if self.path.endswith(".c") else found.resolve() == target


BREAKS = [
    Break("mrope-text-late", "exact at ratio 1", "models/positions.py",
          "        start = self.max_position + 1\n", "        start = self.max_position + 2\n",
          ("tests/test_exactness.py", ORACLE)),
    Break("rope1d-gap-between-blocks", "exact at ratio 1", "models/positions_1d.py",
          "        self.max_position += n\n", "        self.max_position += n + 1\n",
          ("tests/test_family_exactness.py", ORACLE)),
    Break("capacity-one-too-many", "cap held", "compression/budget.py",
          "        return cap_bytes // self.bytes_per_token\n",
          "        return cap_bytes // self.bytes_per_token + 1\n",
          ("tests/test_session_cap.py", "tests/test_quantized_cache.py")),
    Break("metadata-not-moved", "aligned metadata", "compression/capped_cache.py",
          "native.move_rows(self.rows(name).unsqueeze(-1), keep)", "pass",
          ("tests/test_capped_cache.py", ORACLE)),
    Break("positions-not-moved", "aligned metadata", "compression/capped_cache.py",
          "native.move_rows(pos.view(-1, capacity, 1), keep, keep_row=head_row.reshape(-1))", "pass",
          ("tests/test_capped_cache.py", "tests/test_positions.py", ORACLE)),
    Break("metadata-not-moved-in-torch", "aligned metadata", "compression/capped_cache.py",
          "meta[:, :m] = torch.gather(meta[:, :n], 1, keep)", "meta[:, :m] = meta[:, :m]",
          ("tests/test_native_pass.py",)),
    Break("c-tar-sums-not-means", "the C pass equals the torch path", "kernels/cpu_pass.c",
          "if (counts[p] > 1) {", "if (counts[p] > 1 && 0) {",
          ("tests/test_native_pass.py",)),
    Break("c-picks-one-short", "the C pass equals the torch path", "kernels/cpu_pass.c",
          "out[j] = key[j] >= least", "out[j] = key[j] > least",
          ("tests/test_native_pass.py", "tests/test_selection_fast_paths.py")),
    Break("mrope-restart-one-high", "bounded positions", "models/positions.py",
          "        self.max_position = largest\n", "        self.max_position = largest + 1\n",
          ("tests/test_positions.py", ORACLE)),
    Break("rope1d-restart-one-high", "bounded positions", "models/positions_1d.py",
          "        self.max_position = largest\n", "        self.max_position = largest + 1\n",
          (ORACLE,)),
    Break("mrope-layout-gap", "bounded positions", "models/positions.py",
          "        torch.ones_like(temporal),\n", "        2 * torch.ones_like(temporal),\n",
          ("tests/test_positions.py", ORACLE)),
    Break("rope1d-layout-gap", "bounded positions", "models/positions_1d.py",
          "torch.arange(n, dtype=torch.int64, device=kind.device)",
          "torch.arange(1, n + 1, dtype=torch.int64, device=kind.device)",
          (ORACLE,)),
    Break("rotation-sign", "rotation matches recomputation", "kernels/rope_shift.py",
          "new_first = (first * cos).sub_(second * sin)", "new_first = (first * cos).add_(second * sin)",
          ("tests/test_positions.py", "tests/test_family_exactness.py", ORACLE)),
    Break("rotation-section", "rotation matches recomputation", "kernels/rope_shift.py",
          "delta[section.to(delta.device)]", "delta[section.to(delta.device).flip(0)]",
          ("tests/test_positions.py", "tests/test_family_exactness.py", ORACLE)),
    Break("template-ignored", "the checkpoint's own prompt format", "models/chat_format.py",
          "    candidates = [candidate for candidate in (template, fallback_template) if candidate]\n",
          "    candidates = []\n",
          ("tests/test_chat_format.py",)),
    Break("merged-value-norm-stale", "stored value norms", "compression/merging.py",
          "            value_norms.view(-1)[slots] = norms\n", "            pass\n",
          ("tests/test_value_norms.py",)),
    Break("quantiser-scale", "quantisation error bounded", "kernels/kv_quant.py",
          "/ qmax(bits)).to(x.dtype)", "/ (qmax(bits) // 2)).to(x.dtype)",
          ("tests/test_quantized_cache.py",)),
    Break("decoder-scale", "quantisation error bounded", "compression/quantized_kv.py",
          "scale = q.scale.to(torch.float32).unsqueeze(-1)", "scale = 1.01 * q.scale.to(torch.float32).unsqueeze(-1)",
          ("tests/test_quantized_cache.py", ORACLE)),
]


def copy_repository(target: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, and links that make `potwatch.<x>` the
    top-level folder pyproject.toml maps it to."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        parts = package.split(".")
        if len(parts) == 2:  # potwatch.compression -> compression/
            (target / "potwatch" / parts[1]).symlink_to(Path("..") / folder, target_is_directory=True)
        elif len(parts) > 2:  # nested packages must sit inside their parent's folder
            assert folder == "/".join([mapping[".".join(parts[:-1])], parts[-1]]), (package, folder)


def environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale bytecode of a broken file outlives its restoration
    return env


def imported_files(copy: Path, modules: list[str]) -> dict[str, Path]:
    """Where each module is imported from in the copy, as the tests would import it (one process)."""
    probe = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"
    out = subprocess.run([sys.executable, "-c", probe, *modules], cwd=copy, env=environment(copy), check=True,
                         capture_output=True, text=True)
    return dict(zip(modules, (Path(line) for line in out.stdout.strip().splitlines()[-len(modules):])))


def run_tests(copy: Path, target: str) -> tuple[int, str, float]:
    """(pytest's exit status, the first failing test or the last summary line, seconds)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", target],
                         cwd=copy, env=environment(copy), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = (failed or lines or [out.stderr.strip()])[0 if failed else -1]
    return out.returncode, summary[:160], time.perf_counter() - started


def check(copy: Path, item: Break) -> bool:
    path = copy / item.path
    original = path.read_text()
    if original.count(item.old) != 1:
        print(f"  {item.name}: the text to break occurs {original.count(item.old)} times in {item.path}; update BREAKS")
        return False
    path.write_text(original.replace(item.old, item.new))
    try:
        caught = True
        for target in item.tests:
            status, summary, seconds = run_tests(copy, target)
            result = "caught" if status == 1 else ("NOT caught" if status == 0 else f"pytest exit {status}")
            caught &= status == 1
            print(f"  {item.name:24} {target:34} {result:11} {seconds:5.0f} s  {summary}", flush=True)
        return caught
    finally:
        path.write_text(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the breaks to check (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the named tests unbroken")
    args = parser.parse_args()
    breaks = [b for b in BREAKS if not args.only or b.name in args.only]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="potwatch-breaks-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        # the copy, not this checkout, is what the tests import: each broken module from the very file broken
        found = imported_files(copy, sorted({b.module for b in breaks}))
        for item in breaks:
            assert item.imported_as(found[item.module], copy), \
                f"{item.module} is imported from {found[item.module]}, not from the copy's {item.path}"
        print(f"copy at {copy}: {len(found)} modules to break import from it")
        if not args.no_baseline:
            for target in sorted({t for b in breaks for t in b.tests}):
                status, summary, seconds = run_tests(copy, target)
                print(f"  baseline {target:34} {'passes' if status == 0 else 'FAILS'} {seconds:5.0f} s  {summary}",
                      flush=True)
                if status != 0:
                    print("the named tests must pass on the unbroken code first")
                    return 1
        results = {}
        for item in breaks:
            results[item.name] = check(copy, item)
    missed = [name for name, caught in results.items() if not caught]
    print(f"{len(results) - len(missed)}/{len(results)} breaks caught in {time.perf_counter() - started:.0f} s"
          + (f"; NOT caught: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
