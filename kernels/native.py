"""The CPU compression pass's C loops (kernels/cpu_pass.c): built once per machine with the system's C
compiler, loaded through ctypes, called on torch tensors' memory.

Why C and not more torch ops: TaR needs, for every key, a dot product with a table row picked by the key's
patch, and compaction moves every kept row within its own buffer. In torch both take a gather into a
scratch and then a second op per chunk of rows (selection.key_similarity, capped_cache.move_rows), so a
pass read the keys twice and moved K/V twice; and ranking took ~100 small ops on [rows, tokens] tables
(top-k, scatters, nonzero) that each cost more in dispatch than in work. In C each key is read once, each
kept row moved once, and each pick, window and index list is one loop per row. Nothing here is beyond
torch's own C++; torch just cannot fuse it. The two loops over K/V split their rows between as many
threads as torch uses (`torch.get_num_threads()`), as torch's own ops would.

The build takes about half a second, lands in ~/.cache/potwatch/native (or $POTWATCH_CACHE), keyed by
the source, the flags and the machine, and is reused by every later process. Without a compiler, or with
POTWATCH_NATIVE=0, `library()` is None and the callers take their plain-torch path, which is also the
oracle tests/test_native_pass.py holds these loops to."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_pass.c")
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second where the compiler knows no -march=native
# -ffp-contract=fast: multiply-adds fused (ISO C mode turns that off); -fno-math-errno: sqrtf inlined
COMMON_FLAGS = ["-std=c11", "-ffp-contract=fast", "-fno-math-errno", "-shared", "-fPIC"]
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
PARALLEL_MIN_BYTES = 4 << 20  # work a thread of its own is worth: below it, one thread does it all

log = logging.getLogger(__name__)

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_pool: ThreadPoolExecutor | None = None  # made on the first pass that splits its rows, and its size
_pool_threads = 0


def cache_dir() -> Path:
    """$POTWATCH_CACHE/native, else potwatch/native under $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("POTWATCH_CACHE"):
        return Path(os.environ["POTWATCH_CACHE"]) / "native"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "potwatch" / "native"


def _machine() -> str:
    """What a -march=native build depends on: the architecture and the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        lines = []
    return "\n".join([platform.machine(), platform.processor(), *lines])


def _build(compiler: str, flags: list[str], target: Path) -> bool:
    """Compile to a temporary name and rename into place: two processes building at once both succeed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    command = [compiler, *flags, *COMMON_FLAGS, str(SOURCE), "-o", temporary, "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log.info("building %s failed: %s", SOURCE.name, done.stderr.strip()[:500])
            return False
        os.replace(temporary, target)
        return True
    except (OSError, subprocess.SubprocessError) as error:
        log.info("building %s failed: %s", SOURCE.name, error)
        return False
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded library, built first if this machine has none yet; None where it cannot be."""
    if os.environ.get("POTWATCH_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.info("no C compiler found: the compression pass runs on plain torch")
        return None
    source = SOURCE.read_bytes()
    for flags in FLAG_SETS:
        settings = " ".join([compiler, *flags, *COMMON_FLAGS])
        key = hashlib.sha256(b"\0".join([source, settings.encode(), _machine().encode()]))
        target = cache_dir() / f"cpu_pass-{key.hexdigest()[:16]}.so"
        try:
            if target.exists() or _build(compiler, flags, target):
                return _declare(ctypes.CDLL(str(target)))
        except OSError as error:  # an unwritable cache, a library the loader refuses
            log.info("loading %s failed: %s", target, error)
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.tar_scores.restype = ctypes.c_int
    lib.tar_scores.argtypes = [_ptr, ctypes.c_int, _i64, _i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _i64,
                               ctypes.c_float, _ptr]
    lib.move_rows.restype = None
    lib.move_rows.argtypes = [_ptr, _i64, _i64, _i64, _ptr, _i64, _ptr]
    lib.recent_window.restype = ctypes.c_int
    lib.recent_window.argtypes = [_ptr, _ptr, _i64, _i64, ctypes.c_double, _ptr, _ptr, _ptr]
    lib.pick_top.restype = None
    lib.pick_top.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr]
    lib.mask_positions.restype = ctypes.c_int
    lib.mask_positions.argtypes = [_ptr, _i64, _i64, _i64, _i64, _ptr]
    return lib


def ready(*tensors: torch.Tensor) -> bool:
    """The C loops can take these tensors: all on the CPU, and the library built."""
    return all(t.device.type == "cpu" for t in tensors) and library() is not None


def reads_keys(keys) -> bool:
    """The C TaR loop can read these keys [heads, N, D]: a CPU tensor of a float dtype it decodes, unit
    stride along head_dim (not a quantised cache's view)."""
    return isinstance(keys, torch.Tensor) and keys.dtype in DTYPES and keys.dim() == 3 and keys.stride(2) == 1 \
        and ready(keys)


def moves_rows(rows: torch.Tensor) -> bool:
    """The C compaction can move these rows [B, capacity, D]: their (capacity, D) part is contiguous."""
    return rows.dim() == 3 and rows.stride(2) == 1 and rows.stride(1) == rows.shape[2] and ready(rows)


def _per_row(value: int | torch.Tensor, heads: int) -> torch.Tensor:
    """An int64 per row: `value` itself when it is one per row already, else repeated."""
    if isinstance(value, torch.Tensor):
        return value.contiguous().long()
    return torch.full((heads,), int(value), dtype=torch.int64)


def _bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A bool mask's bytes, contiguous (a copy where it has gaps). Callers keep it in a name until the C
    call returns: a temporary's memory would be freed while C still reads it."""
    return None if mask is None else mask.contiguous().view(torch.uint8)


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _row_ranges(rows: int, work_bytes: int) -> list[tuple[int, int]]:
    """Ranges of rows, one per thread torch may use (`torch.get_num_threads()`), none under
    PARALLEL_MIN_BYTES of work: the big loops split their rows between threads, as torch's own ops do."""
    parts = max(1, min(torch.get_num_threads(), rows, work_bytes // PARALLEL_MIN_BYTES))
    step = -(-rows // parts)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _in_threads(calls: list) -> list:
    """Run the calls (each a C loop over its own rows: ctypes lets go of the GIL while C runs) at once."""
    global _pool, _pool_threads
    if len(calls) == 1:
        return [calls[0]()]
    if len(calls) > _pool_threads:
        _pool, _pool_threads = ThreadPoolExecutor(len(calls), thread_name_prefix="potwatch-pass"), len(calls)
    return list(_pool.map(lambda call: call(), calls))


def tar_scores(keys: torch.Tensor, at: torch.Tensor, row: torch.Tensor, col: torch.Tensor, recent: torch.Tensor,
               novel: float) -> torch.Tensor | None:
    """`selection.tar_scores` from its parts: keys [heads, N, D] (`reads_keys`), the visual tokens' rows
    `at` [heads, n], their patch rows and columns [heads, n] and the recent window `recent` bool [heads, n];
    returns float32 scores [heads, n], or None where the patch grid is too large for the C loop's table."""
    heads, _, dim = keys.shape
    n = at.shape[1]
    at, row, col, recent = at.contiguous().long(), row.contiguous().short(), col.contiguous().short(), _bytes(recent)
    scores = torch.empty(heads, n, dtype=torch.float32)

    def score(start: int, end: int) -> int:
        return library().tar_scores(keys[start:end].data_ptr(), DTYPES[keys.dtype], end - start, keys.stride(0),
                                    keys.stride(1), dim, at[start:end].data_ptr(), row[start:end].data_ptr(),
                                    col[start:end].data_ptr(), recent[start:end].data_ptr(), n, novel,
                                    scores[start:end].data_ptr())

    ranges = _row_ranges(heads, heads * n * dim * keys.element_size())
    statuses = _in_threads([lambda start=start, end=end: score(start, end) for start, end in ranges])
    return scores if not any(statuses) else None


def move_rows(rows: torch.Tensor, keep: torch.Tensor, keep_row: torch.Tensor | None = None) -> None:
    """rows[b, j] = rows[b, keep[r, j]] for j < m, in place (`capped_cache.move_rows`'s contract), r being
    keep_row[b] (b when None); rows [B, capacity, D] (`moves_rows`), keep [R, m] strictly ascending."""
    batch, _, width = rows.shape
    keep = keep.contiguous().long()
    m = keep.shape[1]
    if batch == 0 or m == 0:
        return
    item = width * rows.element_size()
    if keep_row is not None:  # the position rows: small, one thread
        keep_row = keep_row.contiguous().long()
        library().move_rows(rows.data_ptr(), batch, rows.stride(0) * rows.element_size(), item, keep.data_ptr(), m,
                            keep_row.data_ptr())
        return

    def move(start: int, end: int) -> None:
        library().move_rows(rows[start:end].data_ptr(), end - start, rows.stride(0) * rows.element_size(), item,
                            keep[start:end].data_ptr(), m, None)

    _in_threads([lambda start=start, end=end: move(start, end) for start, end in _row_ranges(batch, batch * m * item)])


def recent_window(frame: torch.Tensor, valid: torch.Tensor | None, ratio: float,
                  keep: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`selection.recent_tokens` for rows whose frames ascend: (in_recent, kept), bool [heads, n]; None
    when a row's frames do not (the caller sorts)."""
    heads, n = frame.shape
    frame, valid, keep = frame.contiguous().int(), _bytes(valid), _per_row(keep, heads)
    in_recent = torch.empty(heads, n, dtype=torch.bool)
    kept = torch.empty(heads, n, dtype=torch.bool)
    status = library().recent_window(frame.data_ptr(), _address(valid), heads, n, ratio, keep.data_ptr(),
                                     in_recent.data_ptr(), kept.data_ptr())
    return None if status != 0 else (in_recent, kept)


def pick_top(score: torch.Tensor, allowed: torch.Tensor | None, count: int | torch.Tensor) -> torch.Tensor:
    """Mask [heads, n] of the `count` (one per row, or one for all) best scores among the allowed entries
    of each row, ties to the earlier entry (`selection.pick_ranked`)."""
    heads, n = score.shape
    score, allowed, count = score.contiguous().float(), _bytes(allowed), _per_row(count, heads)
    picked = torch.empty(heads, n, dtype=torch.bool)
    scratch = torch.empty(3 * n, dtype=torch.int64)
    library().pick_top(score.data_ptr(), _address(allowed), count.data_ptr(), heads, n, scratch.data_ptr(),
                       picked.data_ptr())
    return picked


def mask_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions [rows, count] of the True entries of each row of `mask` [rows, n], ascending; every row
    must hold `count` of them."""
    rows, n = mask.shape
    mask = (mask if mask.stride(1) == 1 else mask.contiguous()).view(torch.uint8)
    positions = torch.empty(rows, count, dtype=torch.int64)
    status = library().mask_positions(mask.data_ptr(), mask.stride(0), rows, n, count, positions.data_ptr())
    if status != 0:
        raise ValueError(f"mask_positions: a row does not hold {count} entries")
    return positions
