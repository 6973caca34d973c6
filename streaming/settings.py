"""The settings of a stream, checked once: memory cap, K/V bits, compression policy (with its
options), positions, frame rate, answer length, threads, dtype and ingest (all or changed tokens).

The command line (app/watch.py), the web UI (app/ui/sessions.py) and `StreamSession(...)` all build a
`StreamSettings` with `from_user`, so a value that cannot work gets the same one sentence wherever it
is given (docs/bad-inputs.md lists them), and it fails before any model is loaded. Each error carries
`setting` and `rule` (what it concerns, which check failed), so the web page can put it beside the
right field in its own words."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from potwatch.compression.mem_cap import is_auto, parse_optional_mem_cap
from potwatch.compression.policies.base import make_policy
from potwatch.compression.quantized_kv import check_kv_bits, check_policy_width
from potwatch.errors import ModelLoadError, UserError
from potwatch.streaming.change_filter import DEFAULT_CHANGE_THRESHOLD, check_change_threshold, check_ingest
from potwatch.streaming.sources import check_rate
from potwatch.threads import check_threads

POSITION_MODES = ("keep", "compact")
DTYPES = ("float32", "bfloat16", "float16")  # the names a user is told, as models/registry.py's DTYPE_NAMES
DTYPE_ALIASES = ("fp32", "bf16", "fp16")  # taken too


@dataclass(frozen=True)
class StreamSettings:
    """Checked settings; build them with `from_user` (the constructor itself checks nothing).

    cap_bytes: the cap in bytes, None for no cap or for `cap_is_auto` (the largest that fits, chosen by
    the session once the model is loaded). positions: None leaves the choice to the model family.
    threads: None leaves torch's threads alone, "auto" is potwatch's choice, an int sets them.
    dtype: for loading the model (None: the device's default)."""

    cap_bytes: int | None = 1_000_000_000
    cap_is_auto: bool = False
    policy: str = "tar_van"
    policy_options: dict = field(default_factory=dict)
    fps: float = 2.0
    kv_bits: int = 16
    positions: str | None = None
    max_new_tokens: int = 48
    threads: int | str | None = None
    dtype: str | None = None
    ingest: str = "all"  # "changed": only visual tokens that changed reach the model (streaming/change_filter.py)
    change_threshold: float = DEFAULT_CHANGE_THRESHOLD

    @classmethod
    def from_user(cls, mem_cap="1GB", policy: str = "tar_van", fps=2.0, kv_bits=16, positions: str | None = None,
                  max_new_tokens=48, threads=None, dtype: str | None = None, policy_options: dict | None = None,
                  auto_allowed: bool = True, ingest: str = "all",
                  change_threshold=DEFAULT_CHANGE_THRESHOLD) -> "StreamSettings":
        """The settings as given, checked, or the UserError of the first that cannot work. mem_cap: a size
        ('2GB', bytes), None or 'none' for no cap, 'auto' (refused, with its sentence, unless `auto_allowed`)."""
        with _about("mem_cap"):
            auto = auto_allowed and is_auto(mem_cap)
            cap_bytes = None if auto else parse_optional_mem_cap(mem_cap)
        options = dict(policy_options or {})
        with _about("policy"):
            chosen = make_policy(policy, **options)
        with _about("fps"):
            fps = check_rate(fps)
        with _about("kv_bits"):
            kv_bits = check_kv_bits(kv_bits, capped=True)  # 16, 8 or 4
        with _about("kv_bits", "needs_cap"):
            check_kv_bits(kv_bits, cap_bytes is not None or auto)
        with _about("kv_bits", "per_head"):
            check_policy_width(chosen, kv_bits)
        with _about("positions"):
            if positions is not None and positions not in POSITION_MODES:
                raise UserError(f"Unknown positions mode '{positions}'; use keep or compact.")
        with _about("max_new_tokens"):
            max_new_tokens = answer_length(max_new_tokens)
        with _about("threads"):
            if isinstance(threads, str) and threads != "auto":
                raise UserError(f"Threads {threads!r} is not a number of threads; give a whole number, 'auto' or None.")
            if threads is not None and threads != "auto":
                check_threads(threads)
        with _about("ingest"):
            ingest = check_ingest(ingest)
        with _about("change_threshold"):
            change_threshold = check_change_threshold(change_threshold)
        with _about("dtype"):
            if isinstance(dtype, str) and dtype and dtype not in DTYPES + DTYPE_ALIASES:
                raise ModelLoadError(f"Unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}.")
        return cls(cap_bytes=cap_bytes, cap_is_auto=auto, policy=policy, policy_options=options, fps=fps,
                   kv_bits=kv_bits, positions=positions, max_new_tokens=max_new_tokens, threads=threads,
                   dtype=dtype or None, ingest=ingest, change_threshold=change_threshold)

    def changed(self, mem_cap=..., policy: str | None = None, fps=None, kv_bits=None, ingest: str | None = None,
                change_threshold=None) -> "StreamSettings":
        """These settings with some changed (what `StreamSession.reset` may change), checked again; a new
        policy drops the options given for the old one."""
        keeps_policy = policy is None or policy == self.policy
        return StreamSettings.from_user(
            mem_cap=("auto" if self.cap_is_auto else self.cap_bytes) if mem_cap is ... else mem_cap,
            policy=self.policy if keeps_policy else policy,
            fps=self.fps if fps is None else fps,
            kv_bits=self.kv_bits if kv_bits is None else kv_bits,
            positions=self.positions, max_new_tokens=self.max_new_tokens, threads=self.threads, dtype=self.dtype,
            policy_options=self.policy_options if keeps_policy else None,
            ingest=self.ingest if ingest is None else ingest,
            change_threshold=self.change_threshold if change_threshold is None else change_threshold,
        )

    def new_policy(self):
        """A fresh policy object of these settings (each cache gets its own: some learn from their stream)."""
        return make_policy(self.policy, **self.policy_options)


def answer_length(max_new_tokens) -> int:
    """A positive whole number of answer tokens, or a UserError saying so."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise UserError(
            f"The answer length {max_new_tokens!r} is not a whole number of tokens >= 1; "
            "give one like --max-new-tokens 48."
        )
    return int(max_new_tokens)


@contextlib.contextmanager
def _about(setting: str, rule: str = "value"):
    """Name what a UserError raised inside concerns: `error.setting`, and `error.rule`, the check that
    failed ("value": the setting alone; else a rule it breaks with the others)."""
    try:
        yield
    except UserError as error:
        error.setting, error.rule = setting, rule
        raise
