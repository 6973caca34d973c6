"""The compression pass's C loops (kernels/cpu_pass.c) against the plain-torch path each replaces, which
is also what runs on a machine without a C compiler: the same scores, the same picks, the same compacted
cache. Each loop is fed what the pass feeds it and odd cases besides (ties and signed zeros, holes,
frames out of time order, 16-bit keys, strided views); then whole passes of several policies, on one
thread and with the rows split between threads, must leave the cache byte for byte as the torch path
leaves it. Last, the build itself: a fresh cache folder gets a
library, and a machine without a compiler gets the torch path."""

from __future__ import annotations

import ctypes

import pytest
import torch

from potwatch.bench.copy_floor import fill_synthetic, qwen_layout, synthetic_cache
from potwatch.compression import capped_cache
from potwatch.compression.budget import KVGeometry
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies import selection
from potwatch.compression.policies.base import VisualTokens, make_policy
from potwatch.compression.token_state import VALUE_NORM
from potwatch.kernels import native
from tests.test_selection_fast_paths import scores_with_ties

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the torch path is all there is")


@pytest.fixture
def torch_path(monkeypatch):
    """Inside the test, every caller takes its plain-torch path, as on a machine without a compiler."""
    def on_torch(fn, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(native, "library", lambda: None)
            return fn(*args, **kwargs)
    return on_torch


def generator(*seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(seed) % (1 << 31))


# --- TaR scores ----------------------------------------------------------------------------------------


def visual_tokens(seed: int, heads: int, frames: int, grid: tuple[int, int], dim: int, dtype: torch.dtype,
                  holes: bool = False) -> tuple[VisualTokens, torch.Tensor]:
    """Tokens of `frames` frames laid out as the cache holds them (a few text slots first, a padded row
    stride), a random share already evicted per head; and the recent window of their newest frames."""
    g = generator(seed, heads, frames, dim)
    rows, cols = grid
    per_frame = rows * cols
    total = 7 + frames * per_frame
    keys = (torch.randn(heads, total + 9, dim + 3, generator=g) * 2).to(dtype)[:, :total, :dim]  # strided rows
    keep = frames * per_frame * 2 // 3
    at = torch.stack([torch.randperm(frames * per_frame, generator=g)[:keep].sort().values + 7 for _ in range(heads)])
    slot = at - 7
    frame, row, col = slot // per_frame, (slot % per_frame) // cols, slot % cols
    valid = None
    if holes:  # a few entries of each row are holes: frame, row and col -1, never recent
        valid = torch.rand(at.shape, generator=g) > 0.1
        frame, row, col = (t.masked_fill(~valid, -1) for t in (frame, row, col))
    tokens = VisualTokens(keys, keys, frame.int(), row.short(), col.short(), at=at, valid=valid)
    in_recent, _ = selection.recent_tokens(tokens.frame, 0.25, keep, valid)
    return tokens, in_recent


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads, frames, grid, dim", [(1, 2, (1, 1), 4), (3, 9, (3, 4), 64), (2, 6, (5, 7), 80),
                                                     (4, 12, (6, 9), 128)])
def test_tar_scores_match_the_torch_path(torch_path, dtype, heads, frames, grid, dim):
    tokens, in_recent = visual_tokens(1, heads, frames, grid, dim, dtype)
    fast = selection.tar_scores(tokens, in_recent)
    plain = torch_path(selection.tar_scores, tokens, in_recent)
    exact = ~torch.isfinite(plain) | (plain == selection.NOVEL_SCORE)  # the window and the novel patches
    assert torch.equal(fast[exact], plain[exact])
    torch.testing.assert_close(fast, plain, rtol=2e-5, atol=2e-6)


def test_tar_scores_with_holes_and_an_absurd_grid(torch_path):
    tokens, in_recent = visual_tokens(2, 3, 8, (3, 3), 32, torch.float32, holes=True)
    torch.testing.assert_close(selection.tar_scores(tokens, in_recent),
                               torch_path(selection.tar_scores, tokens, in_recent), rtol=2e-5, atol=2e-6)
    tokens.col[0, 0] = 30_000  # a patch grid too large for the C table: the torch path's numbering takes over
    assert native.tar_scores(tokens.keys, tokens.at, tokens.row, tokens.col, in_recent, 1.0) is None
    torch.testing.assert_close(selection.tar_scores(tokens, in_recent),
                               torch_path(selection.tar_scores, tokens, in_recent), rtol=2e-5, atol=2e-6)


# --- picking and positions -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_picks_match_the_torch_path_with_ties_and_signed_zeros(torch_path, seed):
    score = scores_with_ties(seed, heads=4, n=300)
    allowed = torch.rand(score.shape, generator=generator(seed)) < 0.6
    count = torch.tensor([0, 9, 170, 900])  # none, some, about all allowed, more than the row
    assert torch.equal(selection.pick_ranked(score, allowed, count),
                       torch_path(selection.pick_ranked, score, allowed, count))
    for keep in (1, 150, 299):
        assert torch.equal(selection.top_indices(score, keep), torch_path(selection.top_indices, score, keep))


def test_mask_positions_on_strided_rows_and_refuses_uneven_ones(torch_path):
    mask = torch.zeros(5, 40, dtype=torch.bool)
    for row in range(5):
        mask[row, torch.randperm(30, generator=generator(row))[:12]] = True
    view = mask[:, :30]  # rows 40 bytes apart
    assert torch.equal(capped_cache.indices_where(view), torch_path(capped_cache.indices_where, view))
    assert torch.equal(selection.mask_to_indices(view, 12), torch_path(selection.mask_to_indices, view, 12))
    mask[2] = False
    with pytest.raises(ValueError):
        native.mask_positions(mask, 12)


# --- the recent window ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ratio", [0.0, 0.125, 0.3, 1.0])
def test_recent_window_matches_the_torch_path(torch_path, seed, ratio):
    g = generator(seed)
    frame = torch.randint(0, 25, (4, 200), generator=g).sort(dim=1).values.int()  # frames of uneven sizes
    valid = torch.rand(frame.shape, generator=g) > 0.15
    frame = frame.masked_fill(~valid, -1).sort(dim=1).values  # holes first: frame -1 is the oldest
    valid = frame >= 0
    keep = torch.tensor([0, 5, 60, 500])
    for args in ((frame, ratio, keep, valid), (frame, ratio, 40, None)):
        fast = selection.recent_tokens(*args)
        plain = torch_path(selection.recent_tokens, *args)
        assert all(torch.equal(a, b) for a, b in zip(fast, plain))


def test_recent_window_leaves_frames_out_of_time_order_to_the_sort():
    frame = torch.tensor([[0, 0, 1, 1, 2, 2], [3, 3, 1, 1, 2, 2]], dtype=torch.int32)
    assert native.recent_window(frame, None, 0.5, 4) is None
    in_recent, kept = selection.recent_tokens(frame, 0.5, 4)  # the sort path still answers
    assert in_recent[1].tolist() == [True, True, False, False, False, False]


# --- compaction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, width", [(torch.float32, 13), (torch.bfloat16, 8), (torch.int8, 1),
                                          (torch.int16, 1), (torch.int32, 1), (torch.float64, 1), (torch.uint8, 3)])
def test_move_rows_matches_the_torch_path(torch_path, dtype, width):
    rows, capacity, m = 6, 50, 31
    g = generator(width, capacity)
    source = torch.randint(-100, 100, (rows, capacity, width), generator=g).to(dtype)
    keep = torch.stack([torch.randperm(capacity, generator=g)[:m].sort().values for _ in range(rows)])
    keep[0] = torch.arange(m)  # a row already in place
    keep[1] = torch.arange(capacity - m, capacity)  # one long run
    fast, plain = source.clone(), source.clone()
    capped_cache.move_rows(fast, keep)
    torch_path(capped_cache.move_rows, plain, keep)
    assert torch.equal(fast[:, :m], plain[:, :m])
    assert torch.equal(fast[:, :m], source.gather(1, keep[..., None].expand(-1, -1, width)))


def test_move_rows_with_a_row_map_moves_each_position_row_as_its_head():
    layers, pos_rows, heads, capacity, m = 3, 3, 2, 20, 11
    pos = torch.arange(layers * pos_rows * heads * capacity, dtype=torch.int32).view(layers, pos_rows, heads, capacity)
    keep = torch.stack([torch.randperm(capacity, generator=generator(r))[:m].sort().values
                        for r in range(layers * heads)])
    expected = pos.gather(3, keep.view(layers, 1, heads, m).expand(layers, pos_rows, heads, m))
    head_row = torch.arange(layers * heads).view(layers, 1, heads).expand(layers, pos_rows, heads).reshape(-1)
    native.move_rows(pos.view(-1, capacity, 1), keep, keep_row=head_row)
    assert torch.equal(pos[..., :m], expected)


# --- whole passes ---------------------------------------------------------------------------------------


@pytest.fixture(params=[1, 3], ids=["one-thread", "rows-split-between-3-threads"])
def threads(request, monkeypatch):
    """The big loops on one thread, or their rows split between three (however little the work)."""
    if request.param > 1:
        monkeypatch.setattr(native, "PARALLEL_MIN_BYTES", 1)
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


@pytest.mark.parametrize("policy", ["tar_van", "tar", "van", "uniform", "window", "keep_merge", "adakv"])
def test_a_whole_pass_leaves_the_cache_as_the_torch_path_does(torch_path, threads, policy):
    geometry = KVGeometry(4, 2, 32, torch.float32, token_state=make_policy(policy).per_token_state or (VALUE_NORM,))
    layout = qwen_layout((3, 5))
    caches = []
    for on_torch in (False, True):
        cache = synthetic_cache(geometry, 400, layout, 11, seed=5)
        for _ in range(3):  # passes on passes: later ones see frames thinned by earlier ones
            monitor = CompressionMonitor(cache, make_policy(policy))
            room = lambda: monitor.make_room(cache.capacity - cache.length + layout.tokens)  # noqa: B023,E731
            event = torch_path(room) if on_torch else room()
            assert event is not None and event.tokens_after < event.tokens_before
        caches.append(cache)
    fast, plain = caches
    assert fast.length == plain.length
    for name, tensor in fast.storage.items():
        assert torch.equal(tensor, plain.storage[name]), name


def test_refilled_cache_at_the_cost_bench_geometry_compresses_alike(torch_path, threads):
    """The cost bench's layout (Qwen2-VL-2B's 28 x 2 heads of 128, 54-token blocks) at a small cap."""
    geometry = KVGeometry(28, 2, 128, torch.float32, token_state=(VALUE_NORM,))
    layout = qwen_layout((6, 9))
    fast, plain = (synthetic_cache(geometry, 700, layout, 124) for _ in range(2))
    CompressionMonitor(fast, make_policy("tar_van")).make_room(layout.tokens)
    torch_path(CompressionMonitor(plain, make_policy("tar_van")).make_room, layout.tokens)
    for name, tensor in fast.storage.items():
        assert torch.equal(tensor, plain.storage[name]), name
    fill_synthetic(fast, layout, 124)
    assert fast.length == 124 + (700 - 124) // layout.tokens * layout.tokens


# --- the build ------------------------------------------------------------------------------------------


def test_a_fresh_cache_folder_gets_the_library_built_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("POTWATCH_CACHE", str(tmp_path))
    built = native.library.__wrapped__()
    assert isinstance(built, ctypes.CDLL)
    libraries = list((tmp_path / "native").glob("cpu_pass-*.so"))
    assert len(libraries) == 1
    stamp = libraries[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_build", lambda *args: pytest.fail("the library was built again"))
    assert native.library.__wrapped__() is not None
    assert libraries[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize("setting", [{"CC": "/nonexistent/cc"}, {"POTWATCH_NATIVE": "0"}])
def test_without_a_compiler_or_when_switched_off_the_torch_path_runs(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("POTWATCH_CACHE", str(tmp_path))
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert native.library.__wrapped__() is None
    assert not list(tmp_path.glob("native/*.so"))
