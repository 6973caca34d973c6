"""The fidelity table as people read it: accuracy.md (accuracy and early-question accuracy per
configuration and cap ratio, the share of visual tokens really held, the full cache per question kind)
and accuracy.png (accuracy against the cap ratio, one line per configuration; early questions beside)."""

from __future__ import annotations

from pathlib import Path

from potwatch.bench.fidelity import FULL
from potwatch.bench.fidelity_summary import NO_CAP
from potwatch.compression.mem_cap import format_bytes


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _label(name: str) -> str:
    return "full cache (no cap)" if name == FULL else name


def fidelity_markdown(summary: dict) -> str:
    rows, ratios = summary["rows"], summary["ratios"]
    full = rows[FULL][NO_CAP]
    lines = [
        f"# potwatch fidelity table — {summary['model']}",
        "",
        "InfiniPot-V's Table 1 in miniature: every configuration answers the same questions under "
        "caps that hold a share of each stream's visual tokens; \"early\" counts only the questions about events "
        "that left within the first third of the stream.",
        "",
        f"- command: `{summary['command']}`",
        "- answers: " + ("free text, generated greedily and checked against each question's truth (times within "
                         "the set's tolerance)" if summary.get("answers") == "text"
                         else "the option letter the model ranks first"),
        f"- {summary['streams']} stream(s), {full['questions']} questions ({full['early_questions']} early), "
        f"{summary['fps']:g} fps",
        f"- cap at ratio r: the bytes of S + ceil(r·V) + Q tokens in the 16-bit geometry (S = {summary['system_tokens']} "
        f"system-prompt tokens, V = the stream's visual tokens, Q = {summary['question_room']}: the longest question + 1); "
        "the same bytes for every configuration of a ratio",
        f"- caps (mean over streams): " + ", ".join(_cap(rows, r) for r in ratios),
        f"- {summary['threads']} torch thread(s) x {summary['workers']} worker process(es); wall time "
        f"{_duration(summary['wall_s'])}; peak cache within the cap in every run: "
        f"{'yes' if summary['peak_within_cap'] else 'NO'}",
    ]
    if summary.get("notice"):
        lines.append(f"- {summary['notice']}")
    header = ["configuration"] + [f"{r} {part}" for r in ratios for part in ("all", "early")]
    lines += ["", "## Accuracy (all questions, early questions)", "", _row(header), _row(["---"] * len(header))]
    for name, by_ratio in rows.items():
        cells = []
        for r in ratios:
            figures = full if name == FULL else by_ratio.get(r, {})
            cells += [_cell(figures, "accuracy"), _cell(figures, "early_accuracy")]
        lines.append(_row([_label(name)] + cells))
    header = ["configuration"] + ratios + ["s per stream"]
    lines += ["", "## Share of the stream's visual tokens held when asked (mean, min–max over questions)", "",
              _row(header), _row(["---"] * len(header))]
    for name, by_ratio in rows.items():
        if name == FULL:
            continue
        cells = [_held(by_ratio.get(r, {})) for r in ratios]
        seconds = [f["seconds_per_stream"] for f in by_ratio.values() if f.get("seconds_per_stream") is not None]
        cells.append(f"{sum(seconds) / len(seconds):.2f} s" if seconds else "—")
        lines.append(_row([name] + cells))
    lines += ["", f"Full cache: {full['seconds_per_stream']:.2f} s per stream.", "",
              "## Full cache by question kind", "",
              " · ".join(f"{task} {_percent(value)}" for task, value in full["by_task"].items())]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(figures: dict, key: str) -> str:
    if figures.get("errors") and not figures.get("questions"):
        return "cap too small"
    return _percent(figures.get(key))


def _held(figures: dict) -> str:
    if figures.get("held_share") is None:
        return "—"
    return f"{figures['held_share']:.1%} ({figures['held_share_min']:.1%}–{figures['held_share_max']:.1%})"


def _cap(rows: dict, ratio: str) -> str:
    for name, by_ratio in rows.items():
        figures = by_ratio.get(ratio, {})
        if name != FULL and figures.get("cap_bytes"):
            return f"{ratio}: {format_bytes(round(figures['cap_bytes']))}"
    return f"{ratio}: —"


STYLES = {"tar_van": ("tab:red", "-"), "tar": ("tab:orange", "-"), "van": ("tab:purple", "-"),
          "uniform": ("tab:blue", "--"), "window": ("tab:green", ":"), "expected_attention": ("tab:brown", "-"),
          "global_score": ("tab:pink", "-"), "keep_merge": ("tab:olive", "-"), "adakv": ("tab:cyan", "-"),
          "tar_van@8bit": ("tab:red", "--"), "tar_van@4bit": ("tab:red", ":")}
SPARE_COLOURS = ("tab:gray", "black", "gold", "navy", "teal")  # for policies registered later


def _style(name: str, index: int) -> tuple[str, str]:
    return STYLES.get(name, (SPARE_COLOURS[index % len(SPARE_COLOURS)], "-."))


def plot_fidelity(summary: dict, out: Path) -> Path:
    """accuracy.png: accuracy against the share of visual tokens the cap holds, per configuration;
    the full cache as a grey dashed line; all questions left, early questions right."""
    from fractions import Fraction

    from potwatch.bench.plots import _figure

    figure = _figure(11, 4.5)
    panels = figure.subplots(1, 2, sharey=True)
    ratios = summary["ratios"]
    x = [float(Fraction(r)) for r in ratios]
    full = summary["rows"][FULL][NO_CAP]
    for axes, key, title in ((panels[0], "accuracy", "all questions"), (panels[1], "early_accuracy", "early questions")):
        if full.get(key) is not None:
            axes.axhline(full[key], color="grey", linestyle="--", label=_label(FULL))
        spare = 0
        for name, by_ratio in summary["rows"].items():
            if name == FULL:
                continue
            points = [(xi, by_ratio[r][key]) for xi, r in zip(x, ratios) if by_ratio.get(r, {}).get(key) is not None]
            colour, style = _style(name, spare)
            spare += name not in STYLES
            if points:
                wide = name == "tar_van"  # the default policy, drawn on top
                axes.plot(*zip(*points), marker="o", color=colour, linestyle=style, label=name,
                          linewidth=2.4 if wide else 1.3, zorder=3 if wide else 2)
        if full.get(key) is None:
            axes.text(0.5, 0.5, "no such question in this set", transform=axes.transAxes, ha="center", color="grey")
        axes.set_xscale("log", base=2)
        axes.set_xlim(max(x) * 1.25, min(x) / 1.25)  # larger shares left, as in a table read left to right
        axes.set_xticks(x, ratios)
        axes.minorticks_off()
        axes.set_xlabel("share of the stream's visual tokens the cap holds")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("accuracy")
    panels[0].set_ylim(-0.02, 1.02)
    handles, labels = panels[0].get_legend_handles_labels()  # the early panel may have no line to label
    panels[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    notice = " (random-weight demo model: checks the machinery only)" if summary.get("demo_model") else ""
    figure.suptitle(f"accuracy under the cap — {summary['model']}{notice}")
    path = out / "accuracy.png"
    figure.savefig(path)
    return path
