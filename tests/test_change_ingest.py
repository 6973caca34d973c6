"""Change-aware ingest (`ingest="changed"`): only visual tokens that changed reach the language model,
with their own positions (ids with holes), the tower skipped for repeated groups, quiet groups sent
together; the cap held, and an event that changes a few patches still sent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.errors import UserError
from potwatch.models.adapter import Block
from potwatch.streaming import block_pipeline
from potwatch.streaming.change_filter import NEVER, ChangeFilter
from potwatch.streaming.repeat_frames import RepeatedFrames, tile_change, tile_means
from potwatch.streaming.session import StreamSession
from potwatch.streaming.settings import StreamSettings
from tests.conftest import load_test_model
from tests.device import EXACT, assert_close

SIZE = (224, 224)


@pytest.fixture(scope="module")
def tiny():
    return load_test_model("tiny")


def scene(count: int, square_at: range = range(0), seed: int = 0, corner: tuple[int, int] = (100, 140)) -> list[np.ndarray]:
    """A still picture with mild pixel noise; frames in `square_at` show a small red square (about one
    merged patch) at `corner`."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (*SIZE, 3), dtype=np.uint8)
    frames = []
    for index in range(count):
        noise = rng.integers(-2, 3, (*SIZE, 3))
        frame = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
        if index in square_at:
            y, x = corner
            frame[y:y + 28, x:x + 28] = (230, 20, 20)
        frames.append(frame)
    return frames


def held_tokens(cache) -> dict[str, torch.Tensor]:
    """Kind, frame, row, col and positions [rows, n] of what layer 0, head 0 holds."""
    layer = cache.layers[0]
    n = layer.length
    fields = {name: layer.meta[name][0, :n].cpu() for name in ("kind", "frame", "row", "col")}
    fields["pos"] = layer.pos[:, 0, :n].cpu().long()
    return fields


def test_settings_are_checked_once_with_one_sentence():
    assert StreamSettings.from_user(ingest="changed", change_threshold=0.3).ingest == "changed"
    with pytest.raises(UserError, match="Unknown ingest mode 'some'") as error:
        StreamSettings.from_user(ingest="some")
    assert error.value.setting == "ingest"
    with pytest.raises(UserError, match="change threshold") as error:
        StreamSettings.from_user(ingest="changed", change_threshold=-1)
    assert error.value.setting == "change_threshold"


def test_positions_with_holes_equal_a_stock_forward_over_the_same_tokens(demo_adapter):
    """The session's answer logits, after change-aware ingest left holes, equal one forward of the stock
    language model over exactly the tokens it sent, at the ids a full ingest gives them."""
    adapter = demo_adapter
    frames = scene(12, square_at=range(6, 8))
    session = StreamSession(adapter, mem_cap="1GB", ingest="changed", fps=2.0)
    session.repeated_frames.threshold = -1.0  # the tower runs on every group, as the reference's does
    session.feed(frames)
    session.flush()
    held = held_tokens(session.cache)
    visual = held["kind"] == int(TokenKind.VISION)
    made = session.ingest_stats()["visual_tokens"]
    assert 0 < int(visual.sum()) < made  # holes: some tokens were never sent

    positions = adapter.new_positions(2.0)
    pieces = [adapter.system_block(positions)]
    step = adapter.frames_per_group
    with torch.no_grad():
        for first in range(0, len(frames), step):
            block = adapter.vision_block(frames[first:first + step], first, positions)
            sent = {(f, r, c) for f, r, c in zip(held["frame"][visual].tolist(), held["row"][visual].tolist(),
                                                 held["col"][visual].tolist())}
            keep = [i for i, key in enumerate(zip(block.meta.frame.tolist(), block.meta.row.tolist(),
                                                   block.meta.col.tolist())) if key in sent]
            pieces.append(block.take(torch.tensor(keep, dtype=torch.long)))
    question_ids = adapter.question_ids("What changed?")
    pieces.append(adapter.text_block(question_ids, TokenKind.DIALOGUE, positions, 0))
    reference = Block.join(pieces)
    assert torch.equal(reference.meta.pos[:, : len(held["pos"][0])], held["pos"])  # the ids a full ingest gives
    with torch.no_grad():
        out = adapter.language_model(inputs_embeds=reference.embeds, position_ids=reference.meta.pos.unsqueeze(1).to(adapter.device),
                                     use_cache=False)
        oracle = adapter.model.lm_head(out.last_hidden_state[:, -1]).float()[0]
    streamed = session._run(adapter.text_block(question_ids, TokenKind.DIALOGUE, session.positions, 0), logits=True)
    assert_close(streamed, oracle, EXACT)


def test_a_small_event_is_sent_and_a_still_picture_is_not(tiny):
    """A square over about one patch, for two frames of a still scene: its patch's tokens are sent in the
    group it appears in; the quiet groups send only the floor."""
    frames = scene(16, square_at=range(8, 10))
    session = StreamSession(tiny, mem_cap="1GB", ingest="changed")
    session.feed(frames)
    session.flush()
    held = held_tokens(session.cache)
    per_group = session.tokens_per_group
    sent_by_frame = {f: int((held["frame"] == f).sum()) for f in range(0, 16, 2)}
    assert sent_by_frame[0] == per_group  # the first group: every patch is new
    assert sent_by_frame[8] > sent_by_frame[4]  # the square's group sends more than a quiet one
    grid_rows, grid_cols = int(held["row"].max()) + 1, int(held["col"].max()) + 1  # tiny: 3 x 3 at this size
    row, col = (100 + 14) * grid_rows // SIZE[0], (140 + 14) * grid_cols // SIZE[1]  # the square's centre
    square = (held["frame"] == 8) & (held["row"] == row) & (held["col"] == col)
    assert bool(square.any()), "the square's patch was not sent"
    assert session.ingest_stats()["sent_tokens"] < session.ingest_stats()["visual_tokens"] / 2


def test_the_tower_is_skipped_for_a_repeated_group_and_not_for_a_change(tiny):
    still = scene(12, seed=1)
    session = StreamSession(tiny, mem_cap="1GB", ingest="changed")
    session.feed(still)
    assert session.ingest_stats()["tower_skips"] == 5  # every group after the first
    moved = scene(12, square_at=range(10, 12), seed=1)
    again = StreamSession(tiny, mem_cap="1GB", ingest="changed")
    again.feed(moved)
    assert again.ingest_stats()["tower_skips"] == 4  # the square's group ran the tower


def test_tile_change_ignores_flicker_and_noise_but_not_an_object():
    frames = scene(4)
    reference = tile_means(frames[:2])
    brighter = [np.clip(f.astype(np.float32) * 1.06, 0, 255).astype(np.uint8) for f in frames[2:]]
    assert tile_change(tile_means(brighter), reference) < 2.0
    with_square = scene(4, square_at=range(2, 3))[2:]
    assert tile_change(tile_means(with_square), reference) > 20.0
    repeats = RepeatedFrames()
    assert repeats.reusable(frames[:2]) is None  # nothing computed yet


def test_quiet_groups_wait_and_a_question_sends_them(tiny, monkeypatch):
    """Waiting groups reach the model together; the answer is the one of sending each group alone."""
    frames = scene(20, square_at=range(12, 14), seed=2)
    together = StreamSession(tiny, mem_cap="1GB", ingest="changed", max_new_tokens=8)
    together.feed(frames)
    assert together._waiting  # quiet groups are waiting for more
    answer = together.ask("What have you seen so far?")
    assert not together._waiting
    monkeypatch.setattr(block_pipeline, "MAX_WAITING_GROUPS", 1)
    alone = StreamSession(tiny, mem_cap="1GB", ingest="changed", max_new_tokens=8)
    alone.feed(frames)
    assert not alone._waiting
    assert alone.blocks == together.blocks
    assert alone.ask("What have you seen so far?").text == answer.text
    assert torch.equal(held_tokens(alone.cache)["pos"], held_tokens(together.cache)["pos"])


def test_the_cap_holds_under_changed_ingest(tiny):
    frames = scene(320, square_at=range(40, 44), seed=3)
    probe = StreamSession(tiny, mem_cap=None, frame_size=SIZE, max_new_tokens=8)
    cap = probe.geometry.bytes_for(probe.min_tokens() + probe.tokens_per_group)  # just room for waiting groups
    session = StreamSession(tiny, mem_cap=cap, ingest="changed", max_new_tokens=8)
    for first in range(0, len(frames), 2):
        session.feed(frames[first:first + 2])
        assert session.cache.used_bytes <= cap
    session.ask("What have you seen so far?")
    assert session.peak_bytes <= cap and session.cache.nbytes <= cap
    assert session.stats()["compressions"] > 0


def test_the_filter_keeps_the_floor_and_the_ceiling():
    hidden, n = 8, 16
    filter_ = ChangeFilter(threshold=0.1, ceiling=0.5)
    vectors = torch.randn(n, hidden)
    first = filter_._choose(vectors, torch.zeros(n, hidden), torch.full((n,), NEVER))
    assert int(first.sum()) == 8  # never sent: all changed, but the ceiling sends half
    age = torch.arange(n)  # patch 15 was sent longest ago, then 14
    quiet = filter_._choose(vectors, vectors.clone(), age)
    assert torch.nonzero(quiet).flatten().tolist() == [14, 15]  # nothing changed: the floor, stalest first


def test_the_ingest_bench_compares_both_modes_on_both_cameras(tiny):
    """`potwatch bench --ingest-cost`, scaled down: on the fixed camera `changed` sends a fraction of the
    tokens and skips the tower on most groups; on the moving camera it never skips it."""
    from potwatch.bench.ingest_cost import ingest_cost, ingest_markdown

    results = ingest_cost(tiny, seconds=30.0, rounds=1, progress=None)
    fixed, moving = results["fixed camera"], results["moving camera"]
    assert fixed["all"]["sent_per_frame"] == tiny.tokens_per_group(240, 320) / tiny.frames_per_group
    assert fixed["changed"]["sent_per_frame"] < fixed["all"]["sent_per_frame"] / 2
    assert fixed["changed"]["tower_skip_share"] > 0.5 and moving["changed"]["tower_skip_share"] == 0
    assert all(r[mode]["peak_bytes"] <= r[mode]["cap_bytes"] for r in results.values() for mode in ("all", "changed"))
    table = ingest_markdown(results, "tiny", 1, "potwatch bench --ingest-cost")
    assert "| fixed camera | changed |" in table and "changed ÷ all" in table
