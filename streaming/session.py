"""`StreamSession`: feed frames, ask questions at any moment, under a hard KV-cache byte cap.

The session ties the parts together: the adapter turns frames and text into blocks with explicit
positions, the monitor makes room before every block, question and answer, and the capped cache holds
the K/V. One lock serialises model work, so `ask` from one thread while another feeds is safe; and
sessions sharing a model take turns with it (`model_turns.py`), so they never oversubscribe the cores.

This file holds the set-up and the life of a session (cache sizing, reset, close); the block pipeline
(`block_pipeline.py`), the dialogue (`dialogue.py`) and the reporting (`session_stats.py`) are mixins
over the same state."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import replace

import numpy as np

from potwatch.compression.budget import KVGeometry, session_geometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.mem_cap import format_bytes
from potwatch.compression.monitor import CompressionMonitor
from potwatch.errors import DeviceMemoryError, MemCapError, UserError
from potwatch.models.adapter import Block, ModelAdapter
from potwatch.models.count_attention import install_count_attention
from potwatch.streaming.block_pipeline import BlockPipeline
from potwatch.streaming.change_filter import DEFAULT_CHANGE_THRESHOLD, ChangeFilter
from potwatch.streaming.repeat_frames import RepeatedFrames
from potwatch.streaming.dialogue import NOMINAL_QUESTION_TOKENS, Dialogue
from potwatch.streaming.frame_input import check_frame_size
from potwatch.streaming.model_turns import BLOCK, model_turns
from potwatch.streaming.oom_retry import is_out_of_memory, release_device_memory
from potwatch.streaming.session_stats import SessionStats, frames_in_cache  # noqa: F401 (app/ui/plots.py)
from potwatch.streaming.settings import StreamSettings
from potwatch.threads import session_threads

RECENT_BLOCKS = 100  # blocks averaged for the recent ingest speed
# What `reset` may change, and goes back to when the device cannot hold the cache of the new values.
RESET_SETTINGS = ("settings", "auto_cap", "frame_size")


class StreamSession(BlockPipeline, Dialogue, SessionStats):
    """A stream watched by one model under one memory cap.

    mem_cap: bytes ('2GB', '64MiB', an int) for keys + values + metadata of every layer; 'auto' for the
    largest that fits beside the model; None or 'none' for no cap (the cache grows: only for comparisons).
    policy: a registered policy name. fps: the rate frames are sampled at (timestamps and Qwen2.5-VL's
    temporal positions follow it). positions: "keep" gives every token its original position for good;
    "compact" re-numbers the held tokens without gaps after each compaction (rotating their keys to match),
    so positions stay bounded on endless streams at the cost of the time that evicted stretches took
    (default: what the model family needs). kv_bits: 16 keeps K/V as the model computes them; 8 or 4
    quantises them so the same cap holds more tokens (every head of a layer then keeps the same tokens; see
    compression/quantized_kv.py). threads: torch's CPU threads, process-wide: None (the default) leaves them
    alone; "auto" applies potwatch's choice (usable cores less one; OMP_NUM_THREADS, when set, wins); an int
    sets them (see potwatch/threads.py). ingest: "all" sends every visual token to the language model; "changed"
    only those that changed by more than `change_threshold` since their patch was last sent, and skips the vision
    tower for a repeated group (streaming/change_filter.py, repeat_frames.py): faster on fixed cameras. settings: a `StreamSettings` already checked
    (streaming/settings.py), in place of those keyword arguments."""

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
        ingest: str = "all",
        change_threshold: float = DEFAULT_CHANGE_THRESHOLD,
        settings: StreamSettings | None = None,
    ):
        if settings is None:  # every setting checked before anything is loaded or changed
            settings = StreamSettings.from_user(mem_cap=mem_cap, policy=policy, fps=fps, kv_bits=kv_bits,
                                                positions=positions, max_new_tokens=max_new_tokens, threads=threads,
                                                policy_options=policy_options, ingest=ingest,
                                                change_threshold=change_threshold)
        self.thread_choice = session_threads(settings.threads)  # before any torch work of this session
        if isinstance(model, str):
            from potwatch.models.registry import load_model

            model = load_model(model, dtype=settings.dtype)
        self.adapter = model
        self.settings = replace(settings, positions=settings.positions or model.default_positions)
        self.groups_per_block = groups_per_block
        self.dialogue_share = dialogue_share
        self.target_ratio = target_ratio
        self.policy = self.settings.new_policy()
        self.auto_cap = None  # what mem_cap="auto" chose, and why (compression/auto_cap.py)
        self.geometry: KVGeometry = model.geometry()  # set again with the policy's needs in _setup_cache
        self._lock = threading.RLock()
        self._drop_lock = threading.Lock()
        self._closed = False
        self.frame_size: tuple[int, int] | None = None
        if self.settings.cap_is_auto:
            self._choose_auto_cap(frame_size)
        self._setup_cache(frame_size)

    # the settings in force, under the names programs read
    cap_bytes = property(lambda self: self.settings.cap_bytes, doc="The cap in bytes (None: no cap).")
    policy_name = property(lambda self: self.settings.policy, doc="The policy's registered name.")
    policy_options = property(lambda self: self.settings.policy_options, doc="The options it was made with.")
    fps = property(lambda self: self.settings.fps, doc="Frames sampled per second of stream.")
    kv_bits = property(lambda self: self.settings.kv_bits, doc="Bits a cached key or value is stored in.")
    max_new_tokens = property(lambda self: self.settings.max_new_tokens, doc="The longest answer, in tokens.")
    positions_mode = property(lambda self: self.settings.positions, doc='"keep" or "compact".')

    def _choose_auto_cap(self, frame_size: tuple[int, int] | None, freed: int = 0) -> None:
        """Set the cap to the largest that fits on the device now (`freed`: bytes about to be freed first)."""
        from potwatch.compression.auto_cap import auto_cap_for

        self.auto_cap = auto_cap_for(self.adapter, self.policy, self.kv_bits, self.fps, frame_size,
                                     self.groups_per_block, freed)
        self.settings = replace(self.settings, cap_bytes=self.auto_cap.cap_bytes, cap_is_auto=False)

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
        self._waiting: list[Block] = []  # changed tokens of quiet groups, sent together (streaming/block_pipeline.py)
        changed = self.settings.ingest == "changed"
        self.change_filter = ChangeFilter(self.settings.change_threshold) if changed else None
        self.repeated_frames = RepeatedFrames() if changed else None
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

    def reset(self, mem_cap: str | int | None | object = ..., policy: str | None = None, fps: float | None = None,
              kv_bits: int | None = None, ingest: str | None = None, change_threshold: float | None = None) -> None:
        """Forget the stream and the dialogue; optionally change cap, policy, fps, K/V bits or ingest.

        Settings that cannot work (a cap too small, an unknown policy) raise a UserError and leave the
        session as it was. The old cache is freed before the new one is allocated, so a cap sized to the
        free device memory fits; if the device has no room for the new cache after all, the session
        starts afresh at its old settings and says so (a DeviceMemoryError), or closes, saying so, if
        even those no longer fit."""
        self._check_open()
        with self._lock:
            saved = dict(self.__dict__)
            try:
                self.settings = self.settings.changed(mem_cap=mem_cap, policy=policy, fps=fps, kv_bits=kv_bits,
                                                      ingest=ingest, change_threshold=change_threshold)
                # a fresh policy either way: what it learnt from the old stream (adakv's shares) goes with it
                self.policy = self.settings.new_policy()
                if mem_cap is not ...:
                    self.auto_cap = None
                if self.settings.cap_is_auto:  # measured as if the old cache were gone: it is freed first
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
        self.policy = self.settings.new_policy()
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
