"""The block pipeline of a `StreamSession`: frames → temporal groups → one block → the language
model's forward → K/V and metadata in the capped cache, with the out-of-memory retry in pieces.

A mixin of `StreamSession` (streaming/session.py), which owns the state it reads: the adapter, the
cache and its monitor, the positions, the pending frames and the counters. `_run` is the one place
where any block, of frames or of text, reaches the model and the cache."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from potwatch.compression.query_capture import QueryCapture
from potwatch.errors import DeviceMemoryError
from potwatch.models.adapter import Block
from potwatch.models.block_pieces import split_block
from potwatch.streaming.dialogue import NOMINAL_QUESTION_TOKENS
from potwatch.streaming.frame_input import frames_in
from potwatch.streaming.model_turns import BLOCK, model_turns
from potwatch.streaming.oom_retry import is_out_of_memory, piece_sizes, release_device_memory

log = logging.getLogger(__name__)

# Under `ingest="changed"`, quiet groups that send only a few tokens wait for each other, up to this many
# groups or a whole group's worth of tokens, and reach the language model in one forward: on a small model
# a forward's fixed cost, not its tokens, is most of the time. A question (or `flush`) sends them first.
MAX_WAITING_GROUPS = 8


class BlockPipeline:
    """`feed`, `flush` and the forward of every block (see the module's docstring)."""

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
        groups, say), and send the tokens waiting under change-aware ingest, so a question sees every frame
        fed. Returns blocks ingested.

        A short temporal group is completed by repeating its last frame, as Qwen's own video
        preprocessing does; the frames that would have filled it are then skipped (counted in
        `frames_skipped`), so later groups keep their place in time and their position ids."""
        self._check_open()
        with self._lock:
            if not self._pending:
                return self._send_waiting()
            real = len(self._pending)
            padding = -real % self.adapter.frames_per_group
            self._pending.extend([self._pending[-1]] * padding)
            self._ingest_pending(real_frames=real)
            self._skip_frames = padding
            self._send_waiting()
            return 1

    def _ingest_pending(self, real_frames: int | None = None) -> None:
        frames, first = self._pending, self._pending_first
        self._pending = []
        with model_turns(self.adapter).turn(BLOCK):  # the time waited for the model is not this block's cost
            started = time.perf_counter()
            room = self.block_tokens + sum(map(len, self._waiting))
            if self.monitor.make_room(room, headroom=self._question_headroom()):  # first: ids follow
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
                block = self._vision_block(frames, first)
            if self._may_wait(block):
                self._waiting.append(block)
            else:
                self._run(Block.join(self._waiting + [block]), logits=False, piece_tokens=piece_tokens, observe=True)
                self._waiting = []
        except BaseException:
            self.positions = saved_positions
            raise
        if self.change_filter is not None:
            self.change_filter.commit()
            self.repeated_frames.commit()

    def _may_wait(self, block: Block) -> bool:
        """Whether a block of changed tokens may wait for the next (see MAX_WAITING_GROUPS): only plain blocks,
        and only under positions "keep", where no compaction re-numbers ids while it waits."""
        if self.change_filter is None or self.positions_mode != "keep" or type(block) is not Block:
            return False
        if self.cache.capped and self.cache.capacity < self.min_tokens() + self.tokens_per_group:
            return False  # the cap must hold the waiting tokens beside a whole block
        waiting = self._waiting + [block]
        return sum(map(len, waiting)) < self.tokens_per_group and len(waiting) < MAX_WAITING_GROUPS

    def _send_waiting(self) -> int:
        """Send the blocks waiting under change-aware ingest now (a question must see them). Returns 1 if any."""
        if not self._waiting:
            return 0
        with model_turns(self.adapter).turn(BLOCK):
            if self.monitor.make_room(sum(map(len, self._waiting)), headroom=self._question_headroom()):
                self._after_compaction()
            with torch.no_grad():
                self._run(Block.join(self._waiting), logits=False, observe=True)
        self._waiting = []
        return 1

    def _vision_block(self, frames: list[np.ndarray], first: int):
        """The block of visual tokens the language model gets: all of them (`ingest="all"`), or under
        `ingest="changed"` only those that changed (streaming/change_filter.py), with the tower's output reused
        for a repeated group (streaming/repeat_frames.py)."""
        if self.change_filter is None:
            return self.adapter.vision_block(frames, first, self.positions)
        features = self.repeated_frames.reusable(frames)
        if features is None:
            features = self.adapter.vision_features(frames)
            self.repeated_frames.computed(features)
        block = self.adapter.vision_block(frames, first, self.positions, features=features) if features is not None \
            else self.adapter.vision_block(frames, first, self.positions)
        return self.change_filter.select(block)

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
