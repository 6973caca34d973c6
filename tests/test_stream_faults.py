"""Faults part-way through a stream: a file that stops decoding, a webcam that goes away, Ctrl-C, and
running out of device memory in a block. In each the session keeps what it ingested and still answers.

The faults are real where they can be: files cut off or damaged on disk and decoded by PyAV, a real
SIGINT to a real `potwatch` process, and `torch.OutOfMemoryError` raised inside a real forward pass
of the demo model (from its second decoder layer, after the first has written its keys and values)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from potwatch import StreamSession
from potwatch.app.cli import main
from potwatch.errors import DeviceMemoryError
from potwatch.models.registry import load_model
from potwatch.streaming import sources
from tests.bad_media import write_cut_in_half, write_video
from tests.conftest import random_frames
from tests.device import EXACT, TEST_DEVICE, load_test_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"


# --- a file that stops decoding part-way ---------------------------------------------------------

@pytest.fixture(scope="module")
def cut_off_video(tmp_path_factory) -> Path:
    """5 s at 4 fps with its index at the front (as streaming-friendly encoders write), cut in half."""
    folder = tmp_path_factory.mktemp("faults")
    whole = write_video(folder / "whole.mp4", count=20, rate=4, container_options={"movflags": "faststart"})
    return write_cut_in_half(whole, folder / "cut.mp4")


@pytest.fixture(scope="module")
def damaged_video(tmp_path_factory) -> Path:
    """A video whose data is wiped from a third of the way on, its index intact: decoding fails there."""
    path = write_video(tmp_path_factory.mktemp("faults") / "damaged.mp4", count=40, rate=8, size=(160, 120))
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + 4000] = bytes(4000)
    path.write_bytes(bytes(data))
    return path


def test_cut_off_file_reports_how_far_and_still_answers(cut_off_video, capsys):
    code = main(["watch", str(cut_off_video), "--ask", "What happened?", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("potwatch: warning: ")]
    assert len(warning) == 1 and "probably cut off" in warning[0] and "of the 5.0 s its header gives" in warning[0]
    assert "The stream stopped at 00:0" in warning[0]
    assert "Q: What happened?" in out and "stream stopped early" in out


def test_cut_off_file_json_keeps_the_frames_read(cut_off_video, capsys):
    assert main(["watch", str(cut_off_video), "--json", "--ask", "What?", "--max-new-tokens", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 < summary["frames"] < 10  # 10 frames at 2 fps in the whole file
    assert "cut off" in summary["stream_error"]
    assert summary["answers"][0]["frames_covered"] > 0


def test_damaged_file_reports_the_decoder_error_and_still_answers(damaged_video, capsys):
    code = main(["watch", str(damaged_video), "--fps", "8", "--json", "--ask", "What?", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert 0 < summary["frames"] < 40
    assert summary["stream_error"].startswith(f"decoding '{damaged_video}' stopped part-way, after ")
    assert summary["answers"][0]["frames_covered"] > 0


# --- a webcam that disappears -------------------------------------------------------------------

class VanishingCamera:
    """Stands in for cv2.VideoCapture (no camera here): 30 frames at ~100 fps, then it is unplugged,
    after which reads fail the way drivers fail: False, or (some drivers) a cv2.error."""

    raises = False

    def __init__(self, device: int) -> None:
        self.left = 30
        self.rng = np.random.default_rng(device)

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {sources.cv2.CAP_PROP_FPS: 100.0, sources.cv2.CAP_PROP_FRAME_WIDTH: 64.0,
                sources.cv2.CAP_PROP_FRAME_HEIGHT: 48.0}.get(prop, 0.0)

    def read(self):
        time.sleep(0.01)
        if self.left <= 0:
            if self.raises:
                raise sources.cv2.error("VIDEOIO(V4L2): can't read: device disconnected")
            return False, None
        self.left -= 1
        return True, self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)

    def release(self) -> None:
        pass


@pytest.mark.parametrize("raises", [False, True], ids=["reads-fail", "reads-raise"])
def test_webcam_that_disappears(raises, monkeypatch, capsys):
    monkeypatch.setattr(VanishingCamera, "raises", raises)
    monkeypatch.setattr(sources.cv2, "VideoCapture", VanishingCamera)
    code = main(["watch", "webcam:0", "--fps", "20", "--json", "--ask", "What did you see?", "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["stream_error"] == "webcam 0 stopped delivering frames"
    assert summary["frames"] >= 2
    assert summary["answers"][0]["question"] == "What did you see?"
    assert summary["answers"][0]["frames_covered"] > 0


# --- Ctrl-C ---------------------------------------------------------------------------------------

def test_ctrl_c_prints_the_summary_so_far_and_exits_130():
    process = subprocess.Popen(
        [sys.executable, "-m", "potwatch.app.cli", "watch", str(DEMO_VIDEO), "--realtime", "--mem-cap", "400kB"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stderr:  # the cap line comes once the model is loaded and the video opened
            if "potwatch: mem-cap" in line:
                break
        time.sleep(1.5)  # about 3 frames of real time
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    summary = [line for line in out.splitlines() if line.startswith("summary: ")]
    assert len(summary) == 1 and summary[0].endswith("; interrupted")
    frames = int(summary[0].split()[1])
    assert 0 < frames < 60


def test_ctrl_c_inside_a_forward_leaves_the_session_as_it_was(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB")
    session.feed(random_frames(4, seed=1))
    before = _snapshot(session)
    with _fault_in_forward(demo_adapter, KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        session.feed(random_frames(2, seed=2))
    assert _same(_snapshot(session), (6, *before[1:]))  # frames_seen counts the 2 frames fed; nothing else moved
    assert session.ask("What?", max_new_tokens=2).frames_covered == 4
    session.feed(random_frames(2, seed=2))
    assert session.stats()["frames_ingested"] == 6


# --- out of device memory during a block ------------------------------------------------------------

@contextlib.contextmanager
def _fault_in_forward(adapter, error: type[BaseException], times: int | None = None, min_tokens: int = 1):
    """Raise `error` from the demo model's second decoder layer, on forwards of at least `min_tokens`
    tokens, `times` times (None: every time)."""
    left = {"times": times}

    def hook(module, args, kwargs):
        tokens = (args[0] if args else kwargs["hidden_states"]).shape[1]
        if tokens >= min_tokens and (left["times"] is None or left["times"] > 0):
            if left["times"] is not None:
                left["times"] -= 1
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    handle = _decoder_layers(adapter)[1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _decoder_layers(adapter):
    language_model = getattr(adapter, "language_model", None) or adapter.model.model.language_model
    return language_model.layers


def _snapshot(session: StreamSession) -> tuple:
    stats = session.stats()
    cache = session.cache.layers[0]
    return (stats["frames_seen"], stats["frames_ingested"], stats["tokens_in_cache"], stats["max_position"],
            cache.keys.clone(), cache.values.clone())


def _same(a: tuple, b: tuple, atol: float = 0.0) -> bool:
    close = [torch.allclose(x, y, rtol=0, atol=atol) for x, y in zip(a[4:], b[4:])]
    return a[:4] == b[:4] and all(close)


# The CPU always; CUDA where the suite runs there (POTWATCH_TEST_DEVICE=cuda; a CPU run hides the GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(scope="module", params=DEVICES)
def adapter(request, demo_adapter):
    if demo_adapter.device.type == request.param:
        return demo_adapter
    return load_model("demo", dtype="float32", device=request.param)


def test_out_of_memory_once_retries_in_pieces_with_the_same_result(adapter):
    frames = random_frames(6, seed=3, size=(240, 320))  # 54 tokens a block: retried as 27, then 16 at a time
    reference = StreamSession(adapter, mem_cap="400kB")
    reference.feed(frames)
    session = StreamSession(adapter, mem_cap="400kB")
    session.feed(frames[:2])
    with _fault_in_forward(adapter, torch.OutOfMemoryError, times=2, min_tokens=20):  # whole block, then halves
        session.feed(frames[2:4])
    session.feed(frames[4:])
    assert session.stats()["dropped_frames"] == 0
    # chunked prefill wrote the same keys and values (up to float rounding: the matmuls have other shapes)
    assert _same(_snapshot(session), _snapshot(reference), atol=EXACT.atol)
    assert session.ask("What?", max_new_tokens=3).text == reference.ask("What?", max_new_tokens=3).text


def test_deepstack_blocks_retried_in_pieces_give_the_same_result():
    """Qwen3-VL adds DeepStack features at its patch tokens inside the language model: each piece gets its own."""
    adapter = load_test_model("demo-qwen3")
    frames = random_frames(4, seed=3, size=(240, 320))
    reference = StreamSession(adapter, mem_cap="4MB")
    reference.feed(frames)
    session = StreamSession(adapter, mem_cap="4MB")
    session.feed(frames[:2])
    with _fault_in_forward(adapter, torch.OutOfMemoryError, times=2, min_tokens=20):
        session.feed(frames[2:])
    assert _same(_snapshot(session), _snapshot(reference), atol=EXACT.atol)
    assert session.ask("What?", max_new_tokens=3).text == reference.ask("What?", max_new_tokens=3).text


class HostOutOfMemory(RuntimeError):
    """How the CPU allocator runs out: a plain RuntimeError whose words say so."""

    def __init__(self, _message: str):
        super().__init__("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, HostOutOfMemory])
def test_out_of_memory_that_persists_is_reported_and_the_session_keeps_what_it_had(adapter, error):
    session = StreamSession(adapter, mem_cap="400kB")
    session.feed(random_frames(4, seed=4, size=(240, 320)))
    before = _snapshot(session)
    with _fault_in_forward(adapter, error), pytest.raises(DeviceMemoryError) as raised:
        session.feed(random_frames(2, seed=5, size=(240, 320)))
    assert str(raised.value) == (
        f"Device {adapter.device} ran out of memory on frames 4-5, even 16 tokens at a time; the session keeps "
        "the 4 frames it had; lower --mem-cap or free device memory (other programs using it)."
    )
    assert _same(_snapshot(session), (6, *before[1:]))
    assert session.stats()["dropped_frames"] == 2
    assert session.ask("What?", max_new_tokens=2).frames_covered == 4
    session.feed(random_frames(2, seed=5, size=(240, 320)))  # memory back: the stream goes on
    assert session.stats()["frames_ingested"] == 6


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, HostOutOfMemory])
def test_out_of_memory_while_answering_leaves_no_half_turn(demo_adapter, error):
    session = StreamSession(demo_adapter, mem_cap="400kB")
    session.feed(random_frames(4, seed=6))
    before = _snapshot(session)
    with _fault_in_forward(demo_adapter, error):
        with pytest.raises(DeviceMemoryError, match="while answering"):
            session.ask("What?")
    assert _same(_snapshot(session), before) and session.stats()["turns"] == 0
    assert session.ask("What?", max_new_tokens=2).frames_covered == 4


def test_cli_stops_the_stream_on_persistent_out_of_memory_and_answers_from_what_it_had(monkeypatch, capsys):
    """From frame 8 on every block runs out of memory; questions (text) still fit."""
    real_load = load_model

    def load_failing_from_frame_8(*args, **kwargs):
        adapter = real_load(*args, **kwargs)
        armed = {"on": False}
        vision_block, text_block = adapter.vision_block, adapter.text_block

        def vision(frames, first_frame, positions):
            armed["on"] = first_frame >= 8
            return vision_block(frames, first_frame, positions)

        def text(*text_args, **text_kwargs):
            armed["on"] = False
            return text_block(*text_args, **text_kwargs)

        def hook(module, hook_args, hook_kwargs):
            if armed["on"]:
                raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

        adapter.vision_block, adapter.text_block = vision, text
        _decoder_layers(adapter)[1].register_forward_pre_hook(hook, with_kwargs=True)
        return adapter

    monkeypatch.setattr("potwatch.models.registry.load_model", load_failing_from_frame_8)
    code = main(["watch", str(DEMO_VIDEO), "--mem-cap", "400kB", "--ask", "What happened?", "--max-new-tokens", "2",
                 "--device", str(TEST_DEVICE)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"potwatch: warning: Device {TEST_DEVICE} ran out of memory on frames 8-9" in err
    assert "The stream stopped at 00:04.5 after 10 frames" in err
    assert "8 of 10 frames in cache" in out
    assert "summary: 10 frames" in out and "2 dropped frames" in out and "stream stopped early" in out
