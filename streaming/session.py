"""`StreamSession`: feed frames, ask questions at any moment, under a hard KV-cache byte cap.

The session ties the parts together: the adapter turns frames and text into blocks with explicit
positions, the monitor makes room before every block, question and answer, and the capped cache holds
the K/V. One lock serialises model work, so `ask` from one thread while another feeds is safe; and
sessions sharing a model take turns with it (`model_turns.py`), so they never oversubscribe the cores."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from potwatch.compression.budget import KVGeometry, session_geometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.quantized_kv import check_kv_bits, check_policy_width
from potwatch.compression.mem_cap import format_bytes, is_auto, parse_mem_cap
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy
from potwatch.compression.query_capture import QueryCapture
from potwatch.compression.token_meta import TokenKind
from potwatch.errors import DeviceMemoryError, MemCapError, QuestionError, UserError
from potwatch.models.adapter import Block, ModelAdapter
from potwatch.models.block_pieces import split_block
from potwatch.models.count_attention import install_count_attention
from potwatch.streaming.answer import Answer
from potwatch.streaming.frame_input import check_frame_size, frames_in
from potwatch.streaming.model_turns import ANSWER, BLOCK, model_turns
from potwatch.streaming.oom_retry import is_out_of_memory, piece_sizes, release_device_memory
from potwatch.streaming.question_text import clean_question
from potwatch.streaming.sources import check_rate

log = logging.getLogger(__name__)

NOMINAL_QUESTION_TOKENS = 48  # used to size the minimum cap before any question is known
RECENT_BLOCKS = 100  # blocks averaged for the recent ingest speed
# What `reset` may change, and goes back to when the device cannot hold the cache of the new values.
RESET_SETTINGS = ("cap_bytes", "auto_cap", "policy_name", "policy_options", "fps", "kv_bits", "frame_size")


class StreamSession:
    """A stream watched by one model under one memory cap.

    mem_cap: bytes ('2GB', '64MiB', an int) for keys + values + metadata of every layer; None for no cap
    (the cache grows: only for comparisons). policy: a registered policy name. fps: the rate frames are
    sampled at (timestamps and Qwen2.5-VL's temporal positions follow it). positions: "keep" gives every
    token its original position for good; "compact" re-numbers the held tokens without gaps after each
    compaction (rotating their keys to match), so positions stay bounded on endless streams at the cost
    of the time that evicted stretches took (default: what the model family needs). kv_bits: 16 keeps
    K/V as the model computes them; 8 or 4 quantises them so the same cap holds more tokens (every head
    of a layer then keeps the same tokens; see compression/quantized_kv.py). threads: torch's CPU threads,
    process-wide: None (the default) leaves them alone; "auto" applies potwatch's choice (usable cores
    less one; OMP_NUM_THREADS, when set, wins); an int sets them (see potwatch/threads.py)."""

    def __init__(
        self,
        model: ModelAdapter | str = "demo",
        mem_cap: str | int | None = "1GB",
        policy: str = "tar_van",
        fps: float = 2.0,
        groups_per_block: int = 1,
        max_new_tokens: int = 48,
        dialogue_share: float = 0.25,
        target_ratio: float = 0.75,
        frame_size: tuple[int, int] | None = None,
        policy_options: dict | None = None,
        positions: str | None = None,
        kv_bits: int = 16,
        threads: int | str | None = None,
    ):
        from potwatch.threads import session_threads

        self.thread_choice = session_threads(threads)  # before any torch work of this session
        if isinstance(model, str):
            from potwatch.models.registry import load_model

            model = load_model(model)
        fps = check_rate(fps)
        self.adapter = model
        self.positions_mode = positions or model.default_positions
        if self.positions_mode not in ("keep", "compact"):
            raise UserError(f"Unknown positions mode '{positions}'; use keep or compact.")
        self.fps = float(fps)
        self.groups_per_block = groups_per_block
        self.max_new_tokens = _answer_length(max_new_tokens)
        self.dialogue_share = dialogue_share
        self.target_ratio = target_ratio
        self.policy_name = policy
        self.policy_options = dict(policy_options or {})
        self.policy = make_policy(policy, **self.policy_options)
        self.auto_cap = None  # what mem_cap="auto" chose, and why (compression/auto_cap.py)
        self.cap_bytes = None if mem_cap is None or is_auto(mem_cap) else parse_mem_cap(mem_cap)
        self.kv_bits = check_kv_bits(kv_bits, self.cap_bytes is not None or is_auto(mem_cap))
        self.geometry: KVGeometry = model.geometry()  # set again with the policy's needs in _setup_cache
        self._lock = threading.RLock()
        self._drop_lock = threading.Lock()
        self._closed = False
        self.frame_size: tuple[int, int] | None = None
        if is_auto(mem_cap):
            self._choose_auto_cap(frame_size)
        self._setup_cache(frame_size)

    def _choose_auto_cap(self, frame_size: tuple[int, int] | None, freed: int = 0) -> None:
        """Set the cap to the largest that fits on the device now (`freed`: bytes about to be freed first)."""
        from potwatch.compression.auto_cap import auto_cap_for

        check_policy_width(self.policy, self.kv_bits)
        self.auto_cap = auto_cap_for(self.adapter, self.policy, self.kv_bits, self.fps, frame_size,
                                     self.groups_per_block, freed)
        self.cap_bytes = self.auto_cap.cap_bytes

    # --- set-up -------------------------------------------------------------------------------
    def _setup_cache(self, frame_size: tuple[int, int] | None = None) -> None:
        """Size the cache for the current settings (a UserError, before anything is allocated, if they
        cannot work), then allocate it and prefill the system prompt."""
        capacity, system = self._plan_cache(frame_size)
        if self.policy.attention_reads_state:  # the slot counts; other sessions on the model are unaffected
            install_count_attention(self.adapter.attention_modules())
        self.cache = CappedKVCache(self.geometry, capacity, self.adapter.device)
        self.monitor = CompressionMonitor(self.cache, self.policy, self.target_ratio, self.dialogue_share)
        self._warned_positions = False
        self._pending: list[np.ndarray] = []
        self._pending_first = 0
        self._skip_frames = 0  # frames of a temporal group that a flush already completed by repetition
        self.frames_seen = 0
        self.frames_ingested = 0
        self.dropped_frames = 0
        self.frames_skipped = 0  # fed after a flush, inside the temporal group the flush completed
        self.turns = 0
        self.peak_bytes = 0
        self.ingest_seconds = 0.0
        self.blocks = 0
        self._recent_block_seconds: deque[tuple[float, int]] = deque(maxlen=RECENT_BLOCKS)
        with model_turns(self.adapter).turn(BLOCK):
            self._run(system, logits=False)

    def _plan_cache(self, frame_size: tuple[int, int] | None) -> tuple[int | None, Block]:
        """(capacity in tokens, None for no cap; the system block) for the current settings, with fresh
        positions; a MemCapError if the cap cannot hold the system prompt, a block and an answer.
        Allocates no cache: `reset` checks new settings with it before freeing the old cache."""
        check_policy_width(self.policy, self.kv_bits)
        self.geometry = session_geometry(self.adapter.geometry(), self.policy, self.kv_bits)
        capacity = None if self.cap_bytes is None else self.geometry.tokens_for(self.cap_bytes)
        if capacity is not None and capacity < 1:
            raise MemCapError(
                f"Memory cap {format_bytes(self.cap_bytes)} holds no token of this model "
                f"({self.geometry.bytes_per_token:,} bytes a token); raise --mem-cap."
            )
        self.positions = self.adapter.new_positions(self.fps)
        system = self.adapter.system_block(self.positions)
        self.system_tokens = len(system)
        if capacity is not None and self.system_tokens > capacity:
            raise self._cap_too_small(self.system_tokens, capacity)
        self.frame_size = None
        if frame_size is not None:
            self._set_frame_size(frame_size, capacity)
        return capacity, system

    def _set_frame_size(self, frame_size: tuple[int, int], capacity: int | None | object = ...) -> None:
        """Fix the stream's frame size and check the cap holds a block and an answer beside the prompt
        (`capacity`: the cache's own unless given, for a cache not yet allocated)."""
        if capacity is ...:
            capacity = self.cache.capacity if self.cache.capped else None
        check_frame_size(int(frame_size[0]), int(frame_size[1]))
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.tokens_per_group = self.adapter.tokens_per_group(*self.frame_size)
        self.block_tokens = self.tokens_per_group * self.groups_per_block
        if capacity is not None and capacity < self.min_tokens():
            raise self._cap_too_small(self.min_tokens(), capacity)

    def min_tokens(self) -> int:
        """Smallest capacity that holds the system prompt, one block, and a question with its answer."""
        turn = NOMINAL_QUESTION_TOKENS + self.max_new_tokens
        block = getattr(self, "block_tokens", 0)
        needs = (
            self.system_tokens + block + turn,
            int(np.ceil((self.system_tokens + block) / (1 - self.dialogue_share))) + 1,
            int(np.ceil(turn / self.dialogue_share)) + 1,
        )
        return max(needs)

    def _cap_too_small(self, tokens: int, capacity: int) -> MemCapError:
        need = self.geometry.bytes_for(tokens)
        if self.auto_cap is not None:
            return MemCapError(
                f"--mem-cap auto found room for {capacity} tokens ({self.auto_cap.describe()}), but the system "
                f"prompt, one block of frames and an answer need {tokens} tokens ({format_bytes(need)}); free memory "
                "(close other programs), pick a smaller model or lower the frame size."
            )
        return MemCapError(
            f"Memory cap {format_bytes(self.cap_bytes)} holds {capacity} tokens of this model, but the system "
            f"prompt, one block of frames and an answer need at least {tokens} tokens; raise --mem-cap to at least "
            f"{format_bytes(need)}."
        )

    def describe_cap(self, tokens_per_frame: int | None = None) -> str:
        """'2.00 GB holds about 66,507 tokens (...) ≈ 1,020 frames at full detail (130 tokens per group of
        2 frames)' for this model: frames counted as every display counts them (`frames_before_compression`)."""
        per_token = self.geometry.bytes_per_token
        if not self.cache.capped:
            return f"no cap: the cache grows with the stream ({per_token:,} bytes a token)"
        geometry = self.geometry
        kv = f"{geometry.kv_bytes_per_token:,} B/token K+V"
        if geometry.quantized:
            kv = (f"{geometry.kv_bytes_per_token:,} B/token K+V in {geometry.kv_bits} bits + "
                  f"{geometry.workspace_bytes_per_token:,} B decoding workspace")
        text = (
            f"{format_bytes(self.cap_bytes)} holds about {self.cache.capacity:,} tokens "
            f"({kv} + {geometry.meta_bytes_per_token:,} B metadata)"
        )
        per_group = tokens_per_frame or getattr(self, "tokens_per_group", None)
        if per_group:
            frames = self.frames_before_compression(per_group)
            group = self.adapter.frames_per_group
            size = f"{per_group} tokens per group of {group} frames" if group > 1 else f"{per_group} tokens a frame"
            text += f" ≈ {frames:,} frames at full detail ({size})"
        return text

    # --- feeding -------------------------------------------------------------------------------
    def feed(self, frames: np.ndarray | Iterable) -> int:
        """Add one frame (HxWx3, HxW or HxWx4 array), a list of them, or `Frame` objects. Returns blocks ingested."""
        self._check_open()
        done = 0
        with self._lock:
            for pixels in frames_in(frames):  # each checked before it touches the session
                if self._skip_frames:
                    self._skip_frames -= 1
                    self.frames_seen += 1
                    self.frames_skipped += 1
                    continue
                if self.frame_size is None:
                    self._set_frame_size(pixels.shape[:2])
                elif pixels.shape[:2] != self.frame_size:
                    import cv2

                    pixels = cv2.resize(pixels, (self.frame_size[1], self.frame_size[0]), interpolation=cv2.INTER_AREA)
                if not self._pending:
                    self._pending_first = self.frames_seen
                self._pending.append(pixels)
                self.frames_seen += 1
                if len(self._pending) == self.adapter.frames_per_group * self.groups_per_block:
                    self._ingest_pending()
                    done += 1
        return done

    def flush(self) -> int:
        """Ingest the frames still waiting to fill a block now (the odd last frame of Qwen's two-frame
        groups, say), so a question sees every frame fed. Returns blocks ingested.

        A short temporal group is completed by repeating its last frame, as Qwen's own video
        preprocessing does; the frames that would have filled it are then skipped (counted in
        `frames_skipped`), so later groups keep their place in time and their position ids."""
        self._check_open()
        with self._lock:
            if not self._pending:
                return 0
            real = len(self._pending)
            padding = -real % self.adapter.frames_per_group
            self._pending.extend([self._pending[-1]] * padding)
            self._ingest_pending(real_frames=real)
            self._skip_frames = padding
            return 1

    def _ingest_pending(self, real_frames: int | None = None) -> None:
        frames, first = self._pending, self._pending_first
        self._pending = []
        with model_turns(self.adapter).turn(BLOCK):  # the time waited for the model is not this block's cost
            started = time.perf_counter()
            if self.monitor.make_room(self.block_tokens, headroom=self._question_headroom()):  # first: ids follow
                self._after_compaction()
            try:
                self._ingest_block(frames, first, piece_tokens=None)
            except Exception as error:  # noqa: BLE001 - only running out of memory is retried
                if not is_out_of_memory(error):
                    raise
                self._ingest_in_pieces(frames, first)
            elapsed = time.perf_counter() - started
        self.frames_ingested += len(frames) if real_frames is None else real_frames
        self.blocks += 1
        self.ingest_seconds += elapsed
        self._recent_block_seconds.append((elapsed, len(frames)))

    def _question_headroom(self) -> int:
        """Free room a block leaves for a typical question and answer, so asking need not wait on a
        compaction; at most an eighth of the cache, so a small cap still holds several blocks per pass."""
        wish = NOMINAL_QUESTION_TOKENS + self.max_new_tokens
        return min(wish, self.cache.capacity // 8) if self.cache.capped else 0

    def _ingest_block(self, frames: list[np.ndarray], first: int, piece_tokens: int | None) -> None:
        """Vision tower, then the language model in pieces of `piece_tokens` (None: all at once).
        On any failure, Ctrl-C included, the positions and the cache are as they were."""
        saved_positions = copy.deepcopy(self.positions)
        try:
            with torch.no_grad():
                block = self.adapter.vision_block(frames, first, self.positions)
            self._run(block, logits=False, piece_tokens=piece_tokens, observe=True)
        except BaseException:
            self.positions = saved_positions
            raise

    def _ingest_in_pieces(self, frames: list[np.ndarray], first: int) -> None:
        """The block ran out of device memory: retry it in ever smaller pieces, then give up on it,
        keeping what the session had and counting its frames as dropped."""
        for size in piece_sizes(self.block_tokens):
            release_device_memory(self.adapter.device)
            try:
                self._ingest_block(frames, first, piece_tokens=size)
            except Exception as error:  # noqa: BLE001 - only running out of memory is retried
                if not is_out_of_memory(error):
                    raise
                continue
            log.warning("out of device memory on a block of %d tokens; it fit in pieces of %d", self.block_tokens, size)
            return
        release_device_memory(self.adapter.device)
        self.note_dropped(len(frames))
        smallest = min(piece_sizes(self.block_tokens), default=self.block_tokens)
        raise DeviceMemoryError(
            f"Device {self.adapter.device} ran out of memory on frames {first}-{first + len(frames) - 1}, even "
            f"{smallest} tokens at a time; the session keeps the {self.frames_ingested} frames it had; "
            "lower --mem-cap or free device memory (other programs using it)."
        )

    def _run(self, block: Block, logits: bool, piece_tokens: int | None = None, observe: bool = False):
        """Language-model forwards over `block` (in pieces of `piece_tokens`, if given); on any failure,
        Ctrl-C included, the cache is rolled back. With `observe` (vision blocks), a policy that needs
        queries gets the block's queries afterwards; other policies install no hook."""
        start = self.cache.length
        capture = None
        if observe and self.policy.needs_queries and self.cache.capped:
            capture = QueryCapture(self.adapter, len(block))
        try:
            pieces = split_block(block, piece_tokens)
            with torch.no_grad(), capture or contextlib.nullcontext():
                for index, piece in enumerate(pieces):
                    piece_start = self.cache.length
                    if capture is not None:
                        capture.piece(piece_start - start, piece.meta.pos)
                    self.cache.arriving(piece.meta)  # stored by each layer's update() with the K/V
                    out = self.adapter.forward(piece, self.cache, logits and index == len(pieces) - 1)
                if capture is not None and (queries := capture.stats()) is not None:
                    self.monitor.observe(queries)
        except BaseException:
            self.cache.truncate(start)
            raise
        self.peak_bytes = max(self.peak_bytes, self.cache.used_bytes)
        self._warn_position_range()
        return out

    def _after_compaction(self) -> None:
        """In "compact" mode, close the gaps evicted tokens left in the position ids."""
        if self.positions_mode != "compact":
            return
        largest = self.cache.renumber(self.positions.compact_layout, *self.adapter.rotary_frequencies())
        self.positions.restart_after(largest)

    def _warn_position_range(self) -> None:
        if not self._warned_positions and self.positions.max_position >= self.adapter.max_positions():
            self._warned_positions = True
            log.warning(
                "positions passed the model's trained range of %d; use positions='compact' (--positions compact) "
                "for streams this long", self.adapter.max_positions(),
            )

    def note_dropped(self, count: int) -> None:
        """Called by an ingester that dropped frames it could not feed in time. Takes only a counter's
        lock, never the model's: a reader thread must not stall while an answer is generated."""
        with self._drop_lock:
            self.dropped_frames += count

    # --- questions -----------------------------------------------------------------------------
    def ask(self, question: str, on_token: Callable[[str], None] | None = None, max_new_tokens: int | None = None) -> Answer:
        """Answer `question` from the cache as it is now; later questions see this turn."""
        answer = None
        for piece in self._answer(question, max_new_tokens):
            if isinstance(piece, Answer):
                answer = piece
            elif on_token is not None:
                on_token(piece)
        return answer

    def ask_stream(self, question: str, max_new_tokens: int | None = None) -> Iterator[str | Answer]:
        """Yield the answer text piece by piece, then the `Answer`."""
        yield from self._answer(question, max_new_tokens)

    def check_question(self, question, max_new_tokens: int | None = None) -> str:
        """The question as it will be asked, or a QuestionError (empty, not UTF-8, too long for the cap);
        changes nothing, so a program can check its questions before the stream starts."""
        self._check_open()
        question = clean_question(question)
        self._question_budget(question, max_new_tokens)
        return question

    def _question_budget(self, question: str, max_new_tokens: int | None) -> tuple[list[int], int, int]:
        """(question ids, answer length, tokens to reserve) for a clean question that fits the cap."""
        limit = self.max_new_tokens if max_new_tokens is None else _answer_length(max_new_tokens)
        question_ids = self.adapter.question_ids(question)
        resume = self.adapter.resume_ids(answer_finished=True)
        reserve = len(question_ids) + limit + len(resume) + 1
        if reserve > self.monitor.dialogue_capacity:
            raise QuestionError(
                f"The question is {len(question_ids)} tokens, but this cap leaves {self.monitor.dialogue_capacity} "
                f"tokens for a question and its {limit}-token answer; shorten it or raise --mem-cap."
            )
        return question_ids, limit, reserve

    def _answer(self, question: str, max_new_tokens: int | None) -> Iterator[str | Answer]:
        self._check_open()
        question = clean_question(question)
        with self._lock, model_turns(self.adapter).turn(ANSWER):  # the whole answer is one turn on the model
            started = time.perf_counter()
            self.flush()  # the question sees every frame fed so far
            turn = self.turns
            question_ids, limit, reserve = self._question_budget(question, max_new_tokens)
            if self.monitor.make_room_for_turn(reserve):
                self._after_compaction()
            saved_positions = copy.deepcopy(self.positions)
            length_before = self.cache.length
            try:
                generated, finished, first_token_s = yield from self._generate(question_ids, turn, limit, started)
            except BaseException as error:
                # a failed or abandoned answer leaves no half turn behind
                self.cache.truncate(length_before)
                self.positions = saved_positions
                if is_out_of_memory(error):
                    release_device_memory(self.adapter.device)
                    raise DeviceMemoryError(
                        f"Device {self.adapter.device} ran out of memory while answering; the session keeps what it "
                        "had; ask a shorter question, lower --mem-cap or free device memory (other programs using it)."
                    ) from None
                raise
            self.turns += 1
            answer = Answer(
                question=question,
                text=self.adapter.decode(generated).strip(),
                tokens=len(generated),
                seconds=time.perf_counter() - started,
                first_token_s=first_token_s or 0.0,
                frames_seen=self.frames_seen,
                frames_covered=self.frames_covered(),
                meaningless=self.adapter.is_demo,
                video_time_s=max(self.frames_seen - 1, 0) / self.fps,
            )
        yield answer

    def _generate(self, question_ids: list[int], turn: int, limit: int, started: float):
        """Prefill the question, decode greedily while yielding text, then close the turn.
        Returns (answer ids, whether the model ended the answer itself, seconds to the first token)."""
        logits = self._run(self.adapter.text_block(question_ids, TokenKind.DIALOGUE, self.positions, turn), logits=True)
        first_token_s = None
        generated: list[int] = []
        stops = self.adapter.stop_ids()
        text_so_far = ""
        finished = False
        token = None
        while len(generated) < limit:
            token = int(torch.argmax(logits))
            if first_token_s is None:
                first_token_s = time.perf_counter() - started
            if token in stops:
                finished = True
                break
            generated.append(token)
            text = self.adapter.decode(generated)
            if text != text_so_far and not text.endswith("\ufffd"):
                yield text[len(text_so_far):]
                text_so_far = text
            logits = self._run(self.adapter.text_block([token], TokenKind.DIALOGUE, self.positions, turn), logits=True)
        closing = ([token] if finished else []) + self.adapter.resume_ids(answer_finished=finished)
        self._run(self.adapter.text_block(closing, TokenKind.DIALOGUE, self.positions, turn), logits=False)
        return generated, finished, first_token_s

    # --- state ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters for progress displays and summaries (cheap; safe from any thread)."""
        with self._lock:
            kinds = self.cache.kind_counts()
            events = list(self.monitor.events)
            return {
                "model": self.adapter.name,
                "demo_model": self.adapter.is_demo,
                "policy": self.policy_name,
                "fps": self.fps,
                "frames_seen": self.frames_seen,
                "frames_ingested": self.frames_ingested,
                "frames_pending": len(self._pending),
                "frames_skipped": self.frames_skipped,
                "frames_covered": self.frames_covered(),
                "dropped_frames": self.dropped_frames,
                "tokens_in_cache": self.cache.length,
                "capacity_tokens": self.cache.capacity if self.cache.capped else None,
                "tokens_by_kind": {kind.name.lower(): count for kind, count in kinds.items()},
                "cache_bytes": self.cache.used_bytes,
                "allocated_bytes": self.cache.nbytes,
                "peak_bytes": self.peak_bytes,
                "cap_bytes": self.cap_bytes,
                "bytes_per_token": self.geometry.bytes_per_token,
                "kv_bits": self.kv_bits,
                "compressions": self.monitor.event_count,
                "compression_ms": self.monitor.compression_ms,
                "recent_events": [event.as_dict() for event in events[-20:]],
                "turns": self.turns,
                "positions": self.positions_mode,
                "max_position": self.positions.max_position,
                "ingest_seconds": self.ingest_seconds,
                "ms_per_frame": 1000 * self.ingest_seconds / self.frames_ingested if self.frames_ingested else None,
                "recent_ms_per_frame": _ms_per_frame(self._recent_block_seconds),
            }

    def frames_covered(self) -> int:
        """Frames in cache: frames seen that still have tokens in the cache (see `frames_in_cache`)."""
        return frames_in_cache(self.cache.frames_held().tolist(), self.frames_seen, self.adapter.frames_per_group)

    def frames_before_compression(self, tokens_per_group: int | None = None) -> int | None:
        """Frames the cap holds at full detail: frames in cache when the first compression starts
        (None without a cap or a known frame size). After it, more frames stay, each with fewer tokens."""
        per_group = tokens_per_group or getattr(self, "tokens_per_group", None)
        if not self.cache.capped or not per_group:
            return None
        room = self.cache.capacity - self.system_tokens - self._question_headroom()
        return max(room // (per_group * self.groups_per_block), 0) * self.groups_per_block * self.adapter.frames_per_group

    def retention(self) -> dict[int, float]:
        """Share of each held frame's tokens still in the cache (over layers and heads)."""
        with self._lock:
            if not getattr(self, "tokens_per_group", None):
                return {}
            return self.cache.retention(self.tokens_per_group)

    def reset(self, mem_cap: str | int | None | object = ..., policy: str | None = None, fps: float | None = None,
              kv_bits: int | None = None) -> None:
        """Forget the stream and the dialogue; optionally change cap, policy, fps or K/V bits.

        Settings that cannot work (a cap too small, an unknown policy) raise a UserError and leave the
        session as it was. The old cache is freed before the new one is allocated, so a cap sized to the
        free device memory fits; if the device has no room for the new cache after all, the session
        starts afresh at its old settings and says so (a DeviceMemoryError), or closes, saying so, if
        even those no longer fit."""
        self._check_open()
        with self._lock:
            saved = dict(self.__dict__)
            try:
                if policy is not None and policy != self.policy_name:
                    self.policy_options = {}  # options belong to the policy they were given for
                    self.policy_name = policy
                # a fresh policy either way: what it learnt from the old stream (adakv's shares) goes with it
                self.policy = make_policy(self.policy_name, **self.policy_options)
                if fps is not None:
                    self.fps = check_rate(fps)
                auto = mem_cap is not ... and is_auto(mem_cap)
                if mem_cap is not ... and not auto:
                    self.cap_bytes = None if mem_cap is None else parse_mem_cap(mem_cap)
                    self.auto_cap = None
                self.kv_bits = check_kv_bits(self.kv_bits if kv_bits is None else kv_bits,
                                             self.cap_bytes is not None or auto)
                if auto:  # measured as if the old cache were gone: it is freed before the new one is made
                    self._choose_auto_cap(self.frame_size, freed=self.cache.nbytes)
                self._plan_cache(self.frame_size)  # every check, nothing allocated
            except BaseException:
                self.__dict__.update(saved)
                raise
            old_settings = {name: saved[name] for name in RESET_SETTINGS}
            del saved  # it holds the old cache
            self._free_cache()
            try:
                self._setup_cache(self.frame_size)
                return
            except BaseException as error:  # the traceback holds what was allocated: let it go first
                failure = None if is_out_of_memory(error) else error
            self._start_again_at(old_settings, failure)

    def _free_cache(self) -> None:
        """Drop every reference to the cache and give its memory back to the device."""
        self.cache = None
        self.monitor = None
        release_device_memory(self.adapter.device)

    def _start_again_at(self, old_settings: dict, failure: BaseException | None) -> None:
        """After the cache of new settings failed to allocate (`failure`, None when the device ran out of
        memory): a fresh cache at the old settings, then a DeviceMemoryError that says so (or the failure
        itself, if it was no lack of memory); closed, saying so, if even that fails."""
        wanted = self.cap_bytes
        self._free_cache()
        self.__dict__.update(old_settings)
        self.policy = make_policy(self.policy_name, **self.policy_options)
        try:
            self._setup_cache(self.frame_size)
        except BaseException:
            self._closed = True
            self.cache = self.monitor = None
            if failure is not None:
                raise failure from None
            raise DeviceMemoryError(
                f"Device {self.adapter.device} has no room for the new cache ({_cap_words(wanted)}), nor any longer "
                f"for the old one ({_cap_words(self.cap_bytes)}), so this session is closed; start a new one with a "
                "smaller --mem-cap."
            ) from None
        if failure is not None:
            raise failure
        raise DeviceMemoryError(
            f"Device {self.adapter.device} has no room for the new cache ({_cap_words(wanted)}), so the session "
            f"starts afresh at its old settings ({_cap_words(self.cap_bytes)} cap); give a smaller --mem-cap."
        )

    def close(self) -> None:
        """Free the cache; the session cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self.cache = None
            self.monitor = None

    @property
    def closed(self) -> bool:
        """True once `close` ran, or a reset found no room even for the old cache."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise UserError("This session is closed; start a new StreamSession.")

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cap_words(cap_bytes: int | None) -> str:
    return "no cap" if cap_bytes is None else format_bytes(cap_bytes)


def frames_in_cache(held_groups: Iterable[int], frames_seen: int, frames_per_group: int) -> int:
    """The one count of "frames in cache" that every display uses: frames seen whose temporal group
    (named by its first frame) still has a token in the cache. A group completed by repeating its last
    frame counts only the frames already seen, so the count never passes the frames seen."""
    return sum(max(min(frames_per_group, frames_seen - first), 0) for first in held_groups)


def _ms_per_frame(blocks) -> float | None:
    frames = sum(count for _, count in blocks)
    return 1000 * sum(seconds for seconds, _ in blocks) / frames if frames else None


def _answer_length(max_new_tokens) -> int:
    """A positive whole number of answer tokens, or a UserError saying so."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise UserError(
            f"The answer length {max_new_tokens!r} is not a whole number of tokens >= 1; "
            "give one like --max-new-tokens 48."
        )
    return int(max_new_tokens)
