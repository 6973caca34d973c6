"""The two pictures of the web UI, drawn with matplotlib (Agg) into figures that `gr.Plot` shows.

Figures are made with `matplotlib.figure.Figure`, not pyplot, so nothing global piles up between
refreshes; each one has one or two artists per series so a refresh stays well under 100 ms."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # a web server has no display; gr.Plot imports pyplot when it closes a figure

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from potwatch.compression.mem_cap import format_bytes  # noqa: E402
from potwatch.streaming.session import frames_in_cache  # noqa: E402

from potwatch.app.ui.sessions import MemorySample  # noqa: E402
from potwatch.app.ui.status import frames_in_cache_words  # noqa: E402

FIGSIZE = (6.4, 2.9)
DPI = 100
MARGINS = {"left": 0.105, "right": 0.985, "bottom": 0.165, "top": 0.9}
# A phone shows a plot about 300 px wide: drawn that small, with type that stays at least 10 px there
NARROW_FIGSIZE = (3.4, 2.6)
NARROW_MARGINS = {"left": 0.2, "right": 0.97, "bottom": 0.2, "top": 0.88}
TEXT_PT = {False: {"title": 11, "label": 10, "ticks": 10, "legend": 8},
           True: {"title": 10.5, "label": 10, "ticks": 9.5, "legend": 9}}
USED_COLOR = "#2b6cb0"
CAP_COLOR = "#c53030"
EVENT_COLOR = "#dd6b20"
KEPT_COLOR = "#2f855a"


def _unit(nbytes: float) -> tuple[str, float]:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return unit, scale
    return "B", 1.0


def _figure(narrow: bool = False) -> tuple[Figure, object]:
    """A figure for a wide screen, or (`narrow`) one drawn small with large type for a phone."""
    figure = Figure(figsize=NARROW_FIGSIZE if narrow else FIGSIZE, dpi=DPI)
    figure.subplots_adjust(**(NARROW_MARGINS if narrow else MARGINS))  # fixed: a layout engine doubles the drawing time
    axes = figure.add_subplot()
    axes.tick_params(labelsize=TEXT_PT[narrow]["ticks"])
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def memory_figure(history: Sequence[MemorySample], cap_bytes: int | None, narrow: bool = False) -> Figure:
    """KV cache bytes in use over frames seen, the cap as a dashed line, compressions as ticks (`narrow`:
    for a phone, see `_figure`)."""
    figure, axes = _figure(narrow)
    text = TEXT_PT[narrow]
    samples = list(history)
    used = np.array([s.cache_bytes for s in samples], dtype=float)
    top = max(float(cap_bytes or 0), float(used.max()) if used.size else 0.0, 1.0)
    unit, scale = _unit(top)
    if samples:
        frames = np.array([s.frames_seen for s in samples])
        axes.fill_between(frames, used / scale, step="post", color=USED_COLOR, alpha=0.15, linewidth=0)
        axes.step(frames, used / scale, where="post", color=USED_COLOR, linewidth=1.6, label="cache in use")
        counts = np.array([s.compressions for s in samples])
        ticks = frames[1:][np.diff(counts) > 0]
        if ticks.size:
            axes.vlines(ticks, 0, top * 1.08 / scale, color=EVENT_COLOR, linewidth=1.0, alpha=0.7,
                        linestyles="dotted", label=f"compression{'s' if narrow else ''} ({int(counts[-1])})")
        axes.set_xlim(frames[0], max(frames[-1], frames[0] + 1))
    else:
        axes.text(0.5, 0.5, "no frames yet", transform=axes.transAxes, ha="center", va="center", color="gray")
    if cap_bytes:
        axes.axhline(cap_bytes / scale, color=CAP_COLOR, linestyle="--", linewidth=1.4,
                     label=f"cap {format_bytes(cap_bytes)}")
    axes.set_ylim(0, top * 1.12 / scale)
    axes.set_xlabel("frames seen", fontsize=text["label"])
    axes.set_ylabel(f"KV cache ({unit})", fontsize=text["label"])
    axes.set_title("Memory: cache and cap" if narrow else "Memory: KV cache against the cap", fontsize=text["title"],
                   loc="left")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize=text["legend"], framealpha=0.9)
    return figure


def retention_figure(retention: dict[int, float], frames_seen: int, frames_per_group: int,
                     frames_covered: int | None = None, narrow: bool = False) -> Figure:
    """For every frame seen, the share of its tokens the cache still holds (0 once evicted). The title
    counts frames in cache as the table and the answers do (`frames_covered`, from the same snapshot
    as the table; by default counted from `retention`). `narrow`: for a phone, see `_figure`."""
    figure, axes = _figure(narrow)
    text = TEXT_PT[narrow]
    groups = max(-(-frames_seen // frames_per_group), 0)
    if groups:
        shares = np.zeros(groups)
        for frame, share in retention.items():
            group = frame // frames_per_group
            if 0 <= group < groups:
                shares[group] = share
        edges = np.arange(groups + 1) * frames_per_group
        axes.stairs(shares, edges, fill=True, color=KEPT_COLOR, alpha=0.75)
        axes.set_xlim(0, edges[-1])
        if frames_covered is None:
            frames_covered = frames_in_cache(retention, frames_seen, frames_per_group)
        words = frames_in_cache_words(frames_covered, frames_seen)
        axes.set_title(words if narrow else f"Retention: {words}", fontsize=text["title"], loc="left")
    else:
        axes.text(0.5, 0.5, "no frames yet", transform=axes.transAxes, ha="center", va="center", color="gray")
        axes.set_title("Retention", fontsize=text["title"], loc="left")
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("frame", fontsize=text["label"])
    axes.set_ylabel("share of tokens kept", fontsize=text["label"])
    return figure
