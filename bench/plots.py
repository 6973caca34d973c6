"""The benchmark's pictures: KV bytes, ms per frame and RSS against frames seen (one line per
configuration, the cap drawn), time to first token, loyalty against compression ratio, and the needle.

Drawn with `matplotlib.figure.Figure` (Agg), not pyplot, so nothing global is left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"tar_van": "tab:red", "tar": "tab:orange", "van": "tab:purple", "uniform": "tab:blue",
           "window": "tab:green", "none": "black"}
STYLES = {"uniform": "--", "window": ":"}  # capped KV lines coincide (same cap, same schedule): keep each visible


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float = 8.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _label(name: str) -> str:
    return "none (full cache, no cap)" if name == "none" else name


def _rolling_median(values: list[float], width: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if width <= 1 or len(array) < width:
        return array
    half = width // 2
    return np.array([np.median(array[max(0, i - half): i + half + 1]) for i in range(len(array))])


def plot_series(records: dict[str, dict], cap_bytes: int, out: Path, model: str) -> list[Path]:
    """kv_bytes.png, ms_per_frame.png and rss.png: one line per configuration."""
    written = []
    specs = (
        ("kv_bytes.png", "kv_bytes", "KV cache bytes in use (log)", 1e6, "MB", True),
        ("ms_per_frame.png", "ms_per_frame", "ms to ingest one frame (log; rolling median of 9 blocks, raw faint)", 1, "ms", True),
        ("rss.png", "rss_bytes", "process RSS", 1e6, "MB", False),
    )
    for filename, key, title, scale, unit, log in specs:
        figure = _figure()
        axes = figure.add_subplot()
        for name, record in records.items():
            frames = record["series"]["frame"]
            values = np.asarray(record["series"][key], dtype=float) / scale
            colour = COLOURS.get(name)
            if key == "ms_per_frame":
                axes.plot(frames, values, color=colour, alpha=0.2, linewidth=0.6)
                values = _rolling_median(list(values), 9)
            axes.plot(frames, values, color=colour, label=_label(name), linewidth=1.4, linestyle=STYLES.get(name, "-"))
        if key in ("kv_bytes",):
            axes.axhline(cap_bytes / scale, color="grey", linestyle="--", label=f"cap {cap_bytes / 1e6:.1f} MB")
        if log:
            from matplotlib.ticker import ScalarFormatter

            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(ScalarFormatter())
        axes.set_xlabel("frames seen")
        axes.set_ylabel(unit)
        axes.set_title(f"{title} — {model}")
        axes.grid(True, alpha=0.3)
        axes.legend()
        path = out / filename
        figure.savefig(path)
        written.append(path)
    return written


def plot_ttft(cost: dict[str, dict], out: Path) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    for name, figures in cost.items():
        points = sorted((int(frame), seconds) for frame, seconds in figures["ttft_s"].items())
        if points:
            axes.plot(*zip(*points), marker="o", color=COLOURS.get(name), label=_label(name))
    axes.set_xlabel("frames seen when asked")
    axes.set_ylabel("seconds to first answer token (median)")
    axes.set_title("time to first token against stream length")
    axes.grid(True, alpha=0.3)
    axes.legend()
    path = out / "ttft.png"
    figure.savefig(path)
    return path


def plot_loyalty(loyalty: dict, out: Path) -> Path:
    """KL and top-1 agreement against the share of visual tokens kept. Ratio 1 is exact (KL 0), so the
    log-scale KL panel shows only the compressed ratios."""
    figure = _figure(10, 4.2)
    kl_axes, top1_axes = figure.subplots(1, 2)
    ratios = loyalty["ratios"]
    for name, rows in loyalty["policies"].items():
        compressed = [row for row in rows if row["ratio"] < 1 and row["kl_mean"] > 0]
        kl_axes.plot([row["ratio"] for row in compressed], [row["kl_mean"] for row in compressed], marker="o",
                     color=COLOURS.get(name), label=name)
        top1_axes.plot([row["ratio"] for row in rows], [row["top1_agreement"] for row in rows], marker="o",
                       color=COLOURS.get(name), label=name)
    for axes in (kl_axes, top1_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(ratios, [_fraction(r) for r in ratios])
        axes.minorticks_off()
        axes.invert_xaxis()
        axes.set_xlabel("share of visual tokens kept")
        axes.grid(True, alpha=0.3)
    kl_axes.set_yscale("log")
    exact = "exact (KL 0)" if loyalty["ratio_1_exact"] else "NOT exact"
    kl_axes.set_ylabel("KL(full || compressed), nats, mean over questions")
    kl_axes.set_title(f"ratio 1: {exact}", fontsize=9)
    top1_axes.set_ylabel("top-1 agreement with the full cache")
    top1_axes.set_ylim(-0.05, 1.05)
    kl_axes.legend()
    figure.suptitle("loyalty against the full cache (random-weight demo model: checks the machinery only)")
    path = out / "loyalty.png"
    figure.savefig(path)
    return path


def _fraction(ratio: float) -> str:
    return "1" if ratio >= 1 else f"1/{round(1 / ratio)}"


def plot_needle(needle: dict, out: Path) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    keys = (("event_frames_kept", "event frames"), ("event_kept", "box patches"), ("moving_kept", "moving objects"),
            ("static_kept", "static background"), ("visual_kept", "all visual"))
    names = list(needle["policies"])
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        heights = [needle["policies"][name][key] or 0.0 for name in names]
        axes.bar(np.arange(len(names)) + k * width, heights, width, label=label)
    axes.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2, names)
    axes.set_ylabel("share still in the cache (over layers and heads)")
    axes.set_title(f"needle probe: cap = {needle['share']:.3g} of the stream's visual tokens")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = out / "needle.png"
    figure.savefig(path)
    return path
