"""lmms-eval's `--model_args` for potwatch, checked before anything loads: every `watch` setting that
applies to a recorded video, each bad one refused with potwatch's own one sentence (a UserError)."""

from __future__ import annotations

from dataclasses import dataclass

from potwatch.errors import UserError
from potwatch.streaming.settings import StreamSettings

# what lmms-eval adds to every model's arguments: one video streams at a time, so batches do not apply
LMMS_EVAL_ARGS = ("batch_size", "max_batch_size")
MODEL_ARGS = ("model", "mem_cap", "policy", "kv_bits", "fps", "max_frames", "positions", "max_new_tokens", "dtype",
              "device", "threads", "trust_remote_code", "ingest", "change_threshold", "stream_log")


@dataclass(frozen=True)
class PluginSettings:
    """What the model streams with: the session's settings and the run's own."""

    model: str
    stream: StreamSettings
    max_frames: int | None = None
    device: str | None = None
    trust_remote_code: bool = False
    stream_log: str | None = None  # a JSONL file that gets one line per video pass (the agreement test reads it)


def plugin_settings(args: dict) -> PluginSettings:
    """The model_args lmms-eval parsed (`key=value,...`, numbers already numbers), checked."""
    unknown = sorted(set(args) - set(MODEL_ARGS) - set(LMMS_EVAL_ARGS))
    if unknown:
        raise UserError(f"potwatch takes no model_args '{unknown[0]}'; give some of {', '.join(MODEL_ARGS)}.")
    stream = StreamSettings.from_user(
        mem_cap=args.get("mem_cap", "1GB"), policy=str(args.get("policy", "tar_van")), fps=args.get("fps", 2.0),
        kv_bits=args.get("kv_bits", 16), positions=args.get("positions"), max_new_tokens=args.get("max_new_tokens", 48),
        threads=args.get("threads"), dtype=args.get("dtype"), ingest=str(args.get("ingest", "all")),
        **({} if args.get("change_threshold") is None else {"change_threshold": args["change_threshold"]}),
    )
    max_frames = args.get("max_frames")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise UserError(f"max_frames={max_frames!r} is not a whole number of frames >= 1; give one like max_frames=200.")
    trust = args.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise UserError(f"trust_remote_code={trust!r} is neither true nor false; give trust_remote_code=true or leave it out.")
    model = args.get("model", "tiny")
    return PluginSettings(model=str(model), stream=stream, max_frames=max_frames,
                          device=None if args.get("device") is None else str(args["device"]),
                          trust_remote_code=trust, stream_log=args.get("stream_log"))
