"""Safe unless told otherwise: the UI listens on this machine only, uploads are bounded in size and
type and deleted once no tab plays them (and all at once when the server stops), and a checkpoint's
own Python code never runs without --trust-remote-code."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from potwatch.app.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp and tcp6 (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def upload(port: int, name: str, data: bytes) -> tuple[int, object]:
    """POST a file to Gradio's upload route as the page does; (status, parsed body or text)."""
    boundary = "----potwatch" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --- the command line ----------------------------------------------------------------------------
def test_risky_options_are_off_unless_given():
    serve = build_parser().parse_args(["serve"])
    assert serve.host == "127.0.0.1" and serve.share is False and serve.trust_remote_code is False
    watch = build_parser().parse_args(["watch", "video.mp4"])
    assert watch.trust_remote_code is False
    assert build_parser().parse_args(["watch", "v.mp4", "--trust-remote-code"]).trust_remote_code is True
    assert build_parser().parse_args(["serve", "--trust-remote-code"]).trust_remote_code is True
    cluster = build_parser().parse_args(["cluster"])  # a local Ray on loopback, the front door on 127.0.0.1
    assert cluster.host == "127.0.0.1" and cluster.address is None and not hasattr(cluster, "trust_remote_code")


# --- the server ----------------------------------------------------------------------------------
def test_serve_listens_on_this_machine_only_and_deletes_its_uploads_when_stopped(tmp_path):
    pytest.importorskip("gradio")
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp to see where the server listens")
    port = free_port()
    log_path = tmp_path / "serve.log"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "GRADIO_TEMP_DIR"}
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "potwatch.app.cli", "serve", "--model", "demo", "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**env, "HF_HUB_OFFLINE": "1", "TMPDIR": str(temp)},
        )
    try:
        deadline = time.monotonic() + 120
        while "serving demo at" not in log_path.read_text():
            assert server.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.3)
        assert listening_addresses(port) == {"127.0.0.1"}
        status, paths = upload(port, "kitchen.mp4", DEMO_VIDEO.read_bytes())
        assert status == 200, paths
        uploaded = Path(paths[0])
        own = [folder for folder in temp.iterdir() if folder.name.startswith("potwatch-serve-")]
        assert len(own) == 1 and uploaded.is_file() and uploaded.is_relative_to(own[0])
    finally:
        server.send_signal(signal.SIGTERM)  # as systemd or docker stop it
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    assert server.returncode == 0, log_path.read_text()[-2000:]
    assert not uploaded.exists() and not own[0].exists(), "the server left its upload folder behind"


def test_an_upload_over_the_limit_is_refused_before_it_reaches_potwatch(demo_adapter, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    from potwatch.app.ui import page as ui
    from potwatch.app.ui.sessions import SessionPool, TabSettings
    from potwatch.app.ui.uploads import MAX_UPLOAD_MB

    assert ui.launch_options()["max_file_size"] == f"{MAX_UPLOAD_MB}mb" == "200mb"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr(ui, "MAX_UPLOAD", "100kb")  # the same route with a limit a test can reach quickly
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="400kB"))
    app = ui.build_app(pool)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **ui.launch_options())
    try:
        status, text = upload(port, "big.mp4", b"\0" * 150_000)
        assert status == 413 and "maximum allowed size" in text
        status, paths = upload(port, "small.mp4", b"\0" * 50_000)
        assert status == 200 and Path(paths[0]).is_relative_to(tmp_path)
    finally:
        app.close()
        pool.close_all()
    assert not Path(paths[0]).exists()  # Gradio deletes its uploads when the app closes


# --- uploads in the handlers ---------------------------------------------------------------------
@pytest.fixture
def upload_folder(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def as_upload(folder: Path, name: str, data: bytes) -> Path:
    """A file where Gradio puts an upload: <upload folder>/<hash>/<name>."""
    path = folder / uuid.uuid4().hex / name
    path.parent.mkdir()
    path.write_bytes(data)
    return path


@pytest.fixture
def handlers(demo_adapter):
    pytest.importorskip("gradio")
    from potwatch.app.ui.handlers import Handlers
    from potwatch.app.ui.sessions import SessionPool, TabSettings

    pool = SessionPool(demo_adapter, max_sessions=2, settings=TabSettings(mem_cap="400kB"))
    yield Handlers(pool)
    pool.close_all()


def tab(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)


def video_words(outputs: tuple) -> str:
    """The words about the chosen video among an upload's outputs."""
    from potwatch.app.ui.handlers import named

    return named(outputs)["video"]


def test_refused_uploads_are_deleted_at_once(handlers, upload_folder, monkeypatch):
    from potwatch.app.ui import handlers as ui_handlers

    handlers.load(tab("a"))
    text = as_upload(upload_folder, "notes.txt", b"not a video")
    assert "is not a video file" in video_words(handlers.upload(str(text), tab("a")))
    fake = as_upload(upload_folder, "clip.mp4", b"this is text, not an mp4")
    assert video_words(handlers.upload(str(fake), tab("a"))).startswith("⚠")
    monkeypatch.setattr(ui_handlers, "MAX_UPLOAD_BYTES", 1000)
    big = as_upload(upload_folder, "big.mp4", DEMO_VIDEO.read_bytes())
    assert "is over 200 MB" in video_words(handlers.upload(str(big), tab("a")))
    for path in (text, fake, big):
        assert not path.exists() and not path.parent.exists()
    assert handlers.pool.get("a").video_path is None


def test_an_upload_is_deleted_once_no_tab_plays_it(handlers, upload_folder, tmp_path):
    handlers.load(tab("a"))
    handlers.load(tab("b"))
    first = as_upload(upload_folder, "first.mp4", DEMO_VIDEO.read_bytes())
    second = as_upload(upload_folder, "second.mp4", DEMO_VIDEO.read_bytes())
    assert "first.mp4" in video_words(handlers.upload(str(first), tab("a")))
    assert "first.mp4" in video_words(handlers.upload(str(first), tab("b")))  # the same bytes: Gradio hands out one path
    handlers.upload(str(second), tab("a"))
    assert first.exists()  # tab b still plays it
    handlers.use_demo_video(tab("b"))
    assert not first.exists() and second.exists()
    handlers.unload(tab("a"))
    assert not second.exists()
    handlers.unload(tab("b"))
    assert DEMO_VIDEO.is_file()  # never deleted: it is not an upload
    mine = tmp_path / "mine.mp4"  # a file outside the upload folder is never deleted either
    mine.write_bytes(DEMO_VIDEO.read_bytes())
    handlers.load(tab("c"))
    handlers.upload(str(mine), tab("c"))
    handlers.unload(tab("c"))
    assert mine.exists()


# --- trust_remote_code ---------------------------------------------------------------------------
@pytest.fixture
def model_with_code(tmp_path) -> tuple[Path, Path]:
    """A demo checkpoint whose config points at Python code in its folder; that code leaves a mark."""
    folder, mark = tmp_path / "model", tmp_path / "remote-code-ran"
    assert main(["save-demo", "demo", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_marked.MarkedConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_marked.py").write_text(
        "from pathlib import Path\nfrom transformers import Qwen2VLConfig\n"
        f"Path({str(mark)!r}).write_text('ran')\n\n\nclass MarkedConfig(Qwen2VLConfig):\n    pass\n"
    )
    return folder, mark


def test_a_checkpoints_code_does_not_run_by_default(model_with_code, capsys):
    folder, mark = model_with_code
    assert main(["watch", str(DEMO_VIDEO), "--model", str(folder), "--mem-cap", "1MB", "--max-frames", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2
    assert not mark.exists(), "the checkpoint's code ran without --trust-remote-code"


def test_a_checkpoints_code_runs_with_trust_remote_code(model_with_code, tmp_path):
    folder, mark = model_with_code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-m", "potwatch.app.cli", "watch", str(DEMO_VIDEO), "--model", str(folder),
         "--mem-cap", "1MB", "--max-frames", "2", "--json", "--trust-remote-code"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert mark.read_text() == "ran"


def test_the_accuracy_harness_does_not_run_a_checkpoints_code_by_default(model_with_code, tmp_path):
    folder, mark = model_with_code
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"video": DEMO_VIDEO.name, "question": "What is shown?",
                                      "options": ["a kitchen", "a street"], "answer": "A"}]))
    assert build_parser().parse_args(["bench"]).trust_remote_code is False
    assert build_parser().parse_args(["bench", "--trust-remote-code"]).trust_remote_code is True
    code = main(["bench", "--accuracy", str(questions), "--videos", str(DEMO_VIDEO.parent), "--model", str(folder),
                 "--mem-cap", "1MB", "--max-frames", "2", "--out", str(tmp_path / "out")])
    assert code == 0 and json.loads((tmp_path / "out" / "accuracy.json").read_text())["questions"] == 1
    assert not mark.exists(), "the checkpoint's code ran without --trust-remote-code"
