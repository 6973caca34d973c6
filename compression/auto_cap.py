"""`--mem-cap auto`: the largest cap that fits beside the model's weights and its peak activations.

Free memory is measured after the weights are loaded, so it is already net of them (they are reported,
not subtracted twice):
- CUDA: `torch.cuda.mem_get_info` free memory, plus what torch's allocator holds but does not use;
- CPU: MemAvailable from /proc/meminfo, or the cgroup's room (limit − usage + inactive page cache) when
  that is smaller (a container).

The peak beside the cache, for a cache of L tokens, is the larger of two phases: a block's forward
(and an answer), and the compression pass. Both are counted on the safe side:

    vision   = P·(4·d_v + 3·m_v)·b + P²·h_v·4     one vision layer over the block's P patches, its scores in float32
    language = T·(4·d + 3·m)·b                     one language layer over the block's T tokens
             + T·(L + T)·h·4                       that layer's attention scores in float32 (flash kernels need less)
             + 2·(L + T)·(h + h_kv)·d_h·b          its K/V as read from the cache and repeated to every query head
    answer   = V·(b + 4)                           the last token's logits, then again in float32
    forward  = max(vision, language) + answer
    compress = 2·16 MiB + L·layers·h_kv·192 B      the policies' chunked scratch, and per token, layer and KV head
               + L·(bytes per token)/64            the scores, norms and indices of a pass; the compaction's scratch
    peak(L)  = max(forward, compress)

T is the block's tokens at the stream's frame size (1280x720 when unknown), P = T × the patches a token
merges (Qwen's spatial merge², SmolVLM's scale factor², else 4); d, m, h, h_kv, d_h are the language
model's width, MLP width, query and KV heads and head width, d_v, m_v, h_v the vision tower's, b the
bytes of the model's dtype, V the vocabulary. The 192 B is measured with torch's profiler on demo-2b for
every policy at 60 MB and 240 MB caps (the largest growth, adakv's, was 157 B; the pass peaked at
9-35 MB on a 240 MB cache, a block's forward at 1-19 MB, an answer at under 1 MB). Each phase is
fixed + per_token·L, so the cap C is solved in closed form for each and the smaller taken:
C + phase(C / bytes per token) ≤ (1 − MARGIN)·free.

Then two bounds keep the cap sane, and the line it prints says which one chose it:
- on CPU, at most CPU_SHARE (a quarter) of the available RAM: the RAM is also the system's, the
  browser's and the page cache's; the cache is allocated and zero-filled up front, so every byte is
  taken at once; and a CPU attends over a cache of many GB too slowly to keep up with a stream anyway;
- never more than one hour of stream (HORIZON_S at the session's fps and frame size, uncompressed):
  a bigger cap takes memory that most streams never fill, and makes every frame attend over more."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from potwatch.cgroup import memory_room
from potwatch.compression.budget import session_geometry
from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import MemCapError

MARGIN = 0.10  # of the free memory, left for the allocator's fragments, Python's own growth, other programs
CPU_SHARE = 0.25  # the most of the available RAM an auto cap takes on a CPU
HORIZON_S = 3600.0  # an auto cap holds at most this many seconds of stream
DEFAULT_FRAME = (720, 1280)  # (height, width) assumed for the block when the stream's size is unknown
SCORE_BYTES = 4  # attention scores and logits are computed in float32


@dataclasses.dataclass(frozen=True)
class Activations:
    """Peak bytes beside a cache of L tokens: the largest of its phases, each (fixed, per_token) as
    fixed + per_token·L."""

    phases: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, fixed: int, per_token: int) -> "Activations":
        return cls(((fixed, per_token),))

    def at(self, tokens: int) -> int:
        return max(fixed + per_token * tokens for fixed, per_token in self.phases)


@dataclasses.dataclass(frozen=True)
class AutoCap:
    """What `auto` chose, and the figures it chose from."""

    cap_bytes: int
    tokens: int
    free: int  # bytes free after the weights
    where: str  # what `free` measured: "available RAM", "cuda:0 free memory", ...
    weights: int
    activations: int  # at the chosen cap
    bound: str  # what set the cap: "fits", "CPU share" or "one hour"
    limit_text: str = ""  # the bound in words, when it was not the fit

    def describe(self) -> str:
        """'auto: 5.10 GB free after weights 4.40 GB and activations 0.60 GB → cap 4.30 GB ≈ 150,000 tokens'."""
        text = (f"auto: {format_bytes(self.free)} {self.where} after weights {format_bytes(self.weights)} and "
                f"activations {format_bytes(self.activations)}")
        if self.limit_text:
            text += f"; {self.limit_text}"
        return f"{text} → cap {format_bytes(self.cap_bytes)} ≈ {self.tokens:,} tokens"


def decide_cap(free: int, weights: int, activations: Activations, bytes_per_token: int, where: str = "free",
               margin: float = MARGIN, ceiling: int | None = None, ceiling_text: str = "",
               horizon_tokens: int | None = None, horizon_text: str = "", sessions: int = 1) -> AutoCap:
    """The largest cap C with C + activations(C / bytes_per_token) ≤ (1 − margin)·free, shared by
    `sessions` sessions (each with its own activations), cut to `ceiling` bytes and `horizon_tokens`.
    Pure: every figure is given. A MemCapError when not even one token fits."""
    sessions = max(sessions, 1)
    room = (1 - margin) * free / sessions
    fits = min(int((room - fixed) / (1 + per_token / bytes_per_token)) for fixed, per_token in activations.phases)
    fits = max(fits, 0)
    cap, bound, text = fits, "fits", ""
    if ceiling is not None and ceiling // sessions < cap:
        cap, bound, text = ceiling // sessions, "CPU share", ceiling_text
    if horizon_tokens is not None and horizon_tokens * bytes_per_token < cap:
        cap, bound, text = horizon_tokens * bytes_per_token, "one hour", horizon_text
    tokens = cap // bytes_per_token
    if tokens < 1:
        raise MemCapError(
            f"--mem-cap auto found {format_bytes(free)} {where} after the weights ({format_bytes(weights)}), "
            f"too little for the activations ({format_bytes(activations.at(0))}) and any cache; free memory "
            "(close other programs), pick a smaller model, or give a cap such as --mem-cap 256MB."
        )
    cap = tokens * bytes_per_token
    return AutoCap(cap, tokens, free, where, weights, activations.at(tokens), bound, text)


# --- the figures, measured or read from the model ----------------------------------------------------------
def free_memory(device: torch.device | str) -> tuple[int, str]:
    """(bytes free for a cache now, what was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + unused, f"free on {device}"
    available = mem_available()
    room = memory_room()
    if room is not None and (available is None or room < available):
        return room, "free under the cgroup memory limit"
    if available is None:
        raise MemCapError("--mem-cap auto cannot tell how much memory is free here (no /proc/meminfo); "
                          "give a cap such as --mem-cap 1GB.")
    return available, "of RAM available"


def mem_available(meminfo: str | None = None) -> int | None:
    """MemAvailable in bytes, from /proc/meminfo's text (read when not given)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * (1024 if len(parts) > 2 and parts[2].lower() == "kb" else 1)
    return None


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


SCRATCH_BYTES = 2 * 16 * 2**20  # the policies bound their float32 scratch to 16 MiB chunks; two may be alive
PASS_BYTES = 192  # per token, layer and KV head: a compression pass's scores, norms and indices (measured <= 157)
COMPACT_SHARE = 64  # the compaction moves rows through a scratch of at most 1/64 of the cache


def estimate_activations(model: torch.nn.Module, block_tokens: int, dtype: torch.dtype,
                         geometry=None) -> Activations:
    """The formula in the module docstring, from the model's configuration and the cache's geometry
    (None: the model's own, for the forward alone)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    b = torch.empty(0, dtype=dtype).element_size()
    T = block_tokens
    d = text.hidden_size
    m = _first(text, "intermediate_size", default=4 * d)
    h = text.num_attention_heads
    h_kv = _first(text, "num_key_value_heads", default=h)
    d_h = _first(text, "head_dim", default=d // h)
    vocab = text.vocab_size
    language_fixed = T * (4 * d + 3 * m) * b + T * T * h * SCORE_BYTES + 2 * T * (h + h_kv) * d_h * b
    per_token = T * h * SCORE_BYTES + 2 * (h + h_kv) * d_h * b
    vision = getattr(config, "vision_config", None)
    vision_peak = 0
    if vision is not None:
        merge = _first(vision, "spatial_merge_size", default=None) or _first(config, "scale_factor", default=2)
        P = T * merge * merge
        d_v = _first(vision, "embed_dim", "hidden_size")
        m_v = _first(vision, "intermediate_size", default=None) or int(d_v * _first(vision, "mlp_ratio", default=4))
        h_v = _first(vision, "num_heads", "num_attention_heads", default=1)
        vision_peak = P * (4 * d_v + 3 * m_v) * b + P * P * h_v * SCORE_BYTES
    answer = vocab * (b + SCORE_BYTES)
    # max(vision, language(L)): the language term grows with L, so the vision peak can only add to the fixed part
    forward = (max(vision_peak, language_fixed) + answer, per_token)
    if geometry is None:
        return Activations((forward,))
    layers_heads = geometry.layers * geometry.kv_heads
    compress = (SCRATCH_BYTES, layers_heads * PASS_BYTES + geometry.bytes_per_token // COMPACT_SHARE)
    return Activations((forward, compress))


def choose_auto_cap(adapter, geometry, frame_size: tuple[int, int] | None, fps: float, groups_per_block: int = 1,
                    freed: int = 0, sessions: int = 1) -> AutoCap:
    """The auto cap for a session on `adapter` with this K/V geometry (its policy's and bits' bytes per
    token), frames of `frame_size` (DEFAULT_FRAME when None) sampled at `fps`. `freed`: bytes about to
    be given back first (a reset's old cache). `sessions`: sessions that share the free memory (serve)."""
    height, width = frame_size or DEFAULT_FRAME
    per_group = adapter.tokens_per_group(int(height), int(width))
    block_tokens = per_group * groups_per_block
    activations = estimate_activations(adapter.model, block_tokens, adapter.dtype, geometry)
    free, where = free_memory(adapter.device)
    free += freed
    ceiling = ceiling_text = None
    if torch.device(adapter.device).type == "cpu":
        ceiling = int(CPU_SHARE * free)
        ceiling_text = f"at most {CPU_SHARE:.0%} of the RAM available, {format_bytes(ceiling)}"
    horizon_tokens = math.ceil(HORIZON_S * fps / adapter.frames_per_group) * per_group
    horizon_text = (f"one hour of stream at {fps:g} fps and {per_group} tokens a frame"
                    f"{' group' if adapter.frames_per_group > 1 else ''} needs only {horizon_tokens:,} tokens")
    return decide_cap(free, weight_bytes(adapter.model), activations, geometry.bytes_per_token, where,
                      ceiling=ceiling, ceiling_text=ceiling_text or "", horizon_tokens=horizon_tokens,
                      horizon_text=horizon_text, sessions=sessions)


def auto_cap_for(adapter, policy="tar_van", kv_bits: int = 16, fps: float = 2.0,
                 frame_size: tuple[int, int] | None = None, groups_per_block: int = 1, freed: int = 0,
                 sessions: int = 1) -> AutoCap:
    """The auto cap for a session of these settings (`policy`: a name or a policy object; its per-token
    score or slot count costs bytes). `serve` asks with `sessions` = the sessions that may run at once,
    for each one's share of the free memory."""
    from potwatch.compression.policies.base import make_policy

    policy = make_policy(policy) if isinstance(policy, str) else policy
    geometry = session_geometry(adapter.geometry(), policy, kv_bits)
    return choose_auto_cap(adapter, geometry, frame_size, fps, groups_per_block, freed, sessions)
