"""The wheel carries what potwatch needs at run time.

`pip wheel` builds it from a copy of the checkout; it is installed into a fresh venv, which sees this venv's
dependencies (torch, transformers, gradio ...) through a .pth file so nothing is downloaded, while potwatch
itself comes only from the wheel. From a folder outside the checkout, the installed `potwatch` then runs
`watch` on the packaged demo video with the packaged `tiny` model, `bench --quick` cut down to seconds, and
`serve`. A wheel without the demo video fails the same `watch` check.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
RUN_TIMEOUT_S = 300
SERVE_START_S = 180  # loading gradio and the model on a busy 2-core CI machine
# what the build never needs: the checkout's venv, git data, caches and earlier build and test output
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "artifacts", "results")


@dataclass(frozen=True)
class Install:
    """A fresh venv with potwatch installed from a wheel."""

    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def potwatch(self) -> Path:
        return self.prefix / "bin" / "potwatch"


def quiet_env() -> dict[str, str]:
    """This process's environment without anything that would point Python at the checkout."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    return env


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=quiet_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def build_wheel(folder: Path) -> Path:
    """`pip wheel . --no-deps` on a copy of the checkout (the build writes build/ and *.egg-info beside its source)."""
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--wheel-dir", folder / "wheel", source], cwd=folder)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (folder / "wheel").glob("potwatch-*.whl")
    return wheel


def install(wheel: Path, prefix: Path) -> Install:
    """A fresh venv holding `wheel`, with this venv's site-packages behind its own for the dependencies."""
    made = run([sys.executable, "-m", "venv", "--without-pip", prefix], cwd=prefix.parent)
    assert made.returncode == 0, made.stderr
    venv = Install(prefix)
    purelib = run([venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=prefix)
    # a .pth line only extends sys.path: this venv's own .pth files (the editable potwatch) stay unread
    (Path(purelib.stdout.strip()) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run([sys.executable, "-m", "pip", "--python", venv.python, "install", "--no-deps", "--no-index",
                     wheel], cwd=prefix.parent)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def without(wheel: Path, member: str, folder: Path) -> Path:
    """A copy of `wheel` lacking `member` (and its RECORD line)."""
    stripped = folder / wheel.name
    folder.mkdir()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        assert member in names
        for name in names:
            if name == member:
                continue
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(member.encode()))
            target.writestr(name, data)
    return stripped


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Install:
    return install(wheel, tmp_path_factory.mktemp("fresh") / "venv")


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working folder outside the checkout, holding no assets/ of its own."""
    folder = tmp_path_factory.mktemp("elsewhere")
    assert ROOT not in folder.resolve().parents and not (folder / "assets").exists()
    return folder


def check_watch(venv: Install, folder: Path) -> None:
    """The README's first command, from `folder`: the demo video by its checkout path, the packaged `tiny`."""
    watched = run([venv.potwatch, "watch", "assets/demo.mp4", "--model", "tiny", "--mem-cap", "700kB",
                   "--max-new-tokens", "8", "--ask", "What colour was the box?", "--json"], cwd=folder)
    assert watched.returncode == 0, watched.stderr
    summary = json.loads(watched.stdout)
    assert summary["frames"] == 60 and summary["compressions"] >= 1
    assert "red" in summary["answers"][0]["text"].lower(), summary["answers"]


def test_the_demo_video_is_found_through_the_package(tmp_path, monkeypatch):
    from potwatch.assets import demo_video, packaged_or_given

    monkeypatch.chdir(tmp_path)
    assert packaged_or_given("assets/demo.mp4") == packaged_or_given("demo.mp4") == demo_video()
    assert demo_video().is_file() and demo_video().parent.name == "assets"
    (tmp_path / "demo.mp4").write_bytes(b"mine")  # a file of the user's own, by that name, wins
    assert packaged_or_given("demo.mp4") == Path("demo.mp4")
    assert packaged_or_given("other/demo.mp4") == Path("other/demo.mp4")  # a missing path stays itself


def test_wheel_carries_the_run_time_data_and_the_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("potwatch-0.1.0.dist-info/METADATA").decode()
    needed = {f"potwatch/assets/{path.relative_to(ASSETS).as_posix()}" for path in (ASSETS / "tiny").iterdir()}
    assert len(needed) >= 8  # config, weights, tokenizer, processor, chat template ...
    assert needed | {"potwatch/assets/demo.mp4", "potwatch-0.1.0.dist-info/licenses/LICENSE",
                     "potwatch/kernels/cpu_pass.c"} <= names
    assert "potwatch/assets/ui.png" not in names  # the README's screenshot stays in the checkout
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert (ROOT / "LICENSE").read_text().count("Apache License") >= 2


def test_potwatch_comes_from_the_wheel(installed, elsewhere):
    found = run([installed.python, "-c", "import potwatch.assets as a; print(a.__file__); print(a.demo_video())"],
                cwd=elsewhere)
    assert found.returncode == 0, found.stderr
    module, video = (Path(line) for line in found.stdout.split())
    assert installed.prefix.resolve() in module.resolve().parents
    assert installed.prefix.resolve() in video.resolve().parents and video.is_file()


def test_the_installed_package_builds_its_compression_loops(installed, elsewhere):
    probe = ("import os, sys; os.environ['POTWATCH_CACHE'] = sys.argv[1]; from potwatch.kernels import native; "
             "print(native.library()._name)")
    built = run([installed.python, "-c", probe, elsewhere / "potwatch-cache"], cwd=elsewhere)
    assert built.returncode == 0, built.stderr
    library = Path(built.stdout.strip())
    assert library.parent == elsewhere / "potwatch-cache" / "native" and library.is_file()


def test_watch_answers_from_any_folder(installed, elsewhere):
    check_watch(installed, elsewhere)


def test_bench_quick_runs_from_any_folder(installed, elsewhere):
    benched = run([installed.potwatch, "bench", "--quick", "--cost-only", "--model", "demo", "--frames", "8",
                   "--full-cache-frames", "8", "--policies", "tar_van", "--kv-bits", "16", "--mem-cap", "400kB",
                   "--threads", "1", "--out", "bench-out"], cwd=elsewhere)
    assert benched.returncode == 0, benched.stderr
    assert "## Cost against stream length" in benched.stdout
    written = json.loads((elsewhere / "bench-out" / "bench.json").read_text())
    assert written["settings"]["frames"] == 8 and list(written["cost"]) == ["tar_van", "none"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_serve_answers_a_get_from_any_folder(installed, elsewhere):
    port = free_port()
    log = elsewhere / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen([str(installed.potwatch), "serve", "--port", str(port)], cwd=elsewhere,
                                  env=quiet_env(), stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVE_START_S
        page = None
        while page is None:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                page = get(f"http://127.0.0.1:{port}/")
            except OSError:
                time.sleep(0.5)
        assert page[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/config")
        buttons = [c["props"] for c in json.loads(body)["components"] if c.get("type") == "button"]
        demo = [props for props in buttons if props.get("value") == "Use the demo video"]
        assert status == 200 and demo and demo[0]["visible"] is True  # the packaged demo video was found
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_wheel_without_the_demo_video_fails(wheel, tmp_path):
    broken = install(without(wheel, "potwatch/assets/demo.mp4", tmp_path / "wheel"), tmp_path / "venv")
    with pytest.raises(AssertionError, match="does not exist"):
        check_watch(broken, tmp_path)
