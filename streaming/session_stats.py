"""What a `StreamSession` reports about itself: the counters behind every progress display, the one
count of frames in cache, the retention of each held frame, and the cap in words.

A mixin of `StreamSession` (streaming/session.py), which keeps the counters; nothing here changes
the session."""

from __future__ import annotations

from collections.abc import Iterable

from potwatch.compression.mem_cap import format_bytes


class SessionStats:
    """`stats`, `frames_covered`, `frames_before_compression`, `retention` and `describe_cap`."""

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
                "ingest": self.ingest_stats(),
            }

    def ingest_stats(self) -> dict:
        """What change-aware ingest did: visual tokens the tower made, those sent to the language model,
        and groups whose tower run was skipped as repeats (all None under `ingest="all"`)."""
        counts = self.change_filter.counts if self.change_filter is not None else None
        return {
            "mode": self.settings.ingest,
            "change_threshold": self.settings.change_threshold if counts else None,
            "visual_tokens": counts.visual_tokens if counts else None,
            "sent_tokens": counts.sent_tokens if counts else None,
            "tower_skips": self.repeated_frames.skips if counts else None,
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


def frames_in_cache(held_groups: Iterable[int], frames_seen: int, frames_per_group: int) -> int:
    """The one count of "frames in cache" that every display uses: frames seen whose temporal group
    (named by its first frame) still has a token in the cache. A group completed by repeating its last
    frame counts only the frames already seen, so the count never passes the frames seen."""
    return sum(max(min(frames_per_group, frames_seen - first), 0) for first in held_groups)


def _ms_per_frame(blocks) -> float | None:
    frames = sum(count for _, count in blocks)
    return 1000 * sum(seconds for seconds, _ in blocks) / frames if frames else None
