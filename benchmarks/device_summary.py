"""The figures of one device check (benchmarks/device_check.sh), from the files it wrote, as the lines
the issue asks for: how much of each tolerance the tests used, kernel against reference speed,
compression against `copy_`, ms/frame flatness, and peak GPU memory against weights + cap.

    .venv/bin/python benchmarks/device_summary.py FOLDER      # prints them and writes FOLDER/summary.md

A figure whose step did not run (or ran on the CPU, where there is no GPU memory or compiled kernel)
is said to be missing rather than left out."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mb(value) -> str:
    return "—" if value is None else f"{value / 1e6:,.1f} MB"


def _x(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def tolerance_lines(deviations: dict | None) -> list[str]:
    if not deviations:
        return ["- tests: no tolerance figures (the test step did not finish)"]
    lines = [f"- tests on {deviations['device']}: the largest difference each tolerance saw (its share: of atol + "
             "rtol x |expected|, what allclose allows)"]
    for name, row in deviations["tolerances"].items():
        lines.append(f"  - {name}: max |difference| {row['max_abs_difference']:.3g} (atol {row['atol']:.0e}), at most "
                     f"{100 * row['max_share_of_tolerance']:.1f}% of the tolerance, {row['comparisons']} comparisons")
    return lines


def kernel_lines(kernels: dict | None) -> list[str]:
    if not kernels:
        return ["- kernels: not measured (no CUDA GPU or no triton)"]
    lines = [f"- kernels on {kernels['device']} (triton {kernels['triton']}, {kernels['geometry']['tokens']:,} tokens): "
             "kernel ms against reference ms"]
    for op in kernels["ops"]:
        lines.append(f"  - {op['op']}: {op['kernel_ms']:.3f} ms against {op['reference_ms']:.3f} ms, "
                     f"{op['speed_up']:.2f}x, {op['kernel_gb_s']:.0f} GB/s, max |difference| {op['max_abs_difference']:.3g}")
    return lines


def bench_lines(bench: dict | None) -> list[str]:
    if not bench:
        return ["- bench: no figures (the bench step did not finish)"]
    machine = bench["machine"]
    where = machine.get("cuda") or machine["cpu"]
    lines = [f"- bench on {where}, model {bench['settings']['model']}, {bench['settings']['frames']} frames, "
             f"cap {_mb(bench['settings']['cap_bytes'])}: per configuration"]
    for name, f in bench["cost"].items():
        if f["cap_bytes"] is None:
            text = f"  - {name} (full cache, {f['frames']} frames): ms/frame {_x(f['ms_per_frame_late'])} at the end"
        else:
            text = (f"  - {name}: ms/frame {_x(f['ms_per_frame_early'])} early, {_x(f['ms_per_frame_late'])} late, "
                    f"flatness {_x(f['flatness'])}; compression {_x(f['compression_ms_median'])} ms against copy_ "
                    f"{_x(f['copy_ms'])} ms = {_x(f['compression_vs_copy'])}x")
        memory = f.get("gpu_memory")
        if memory:
            text += (f"; GPU peak {_mb(memory['peak_allocated_bytes'])} against weights {_mb(memory['weights_bytes'])}"
                     f" + cap {_mb(memory['cap_bytes'] if memory['cap_bytes'] is not None else memory['cache_bytes'])}"
                     f" = {_x(memory['peak_over_weights_and_cap'])}x")
        lines.append(text)
    scale = bench.get("compression_at_scale")
    if scale:
        lines.append(f"  - one pass over {scale['tokens']:,} tokens against copy_ ({_x(scale['copy_ms'])} ms): "
                     + ", ".join(f"{name} {_x(row['vs_copy'])}x" for name, row in scale["policies"].items()))
    return lines


def summary(folder: Path) -> list[str]:
    lines = [f"# Device check figures ({folder})", ""]
    lines += tolerance_lines(_load(folder / "deviations.json"))
    lines += kernel_lines(_load(folder / "kernels.json"))
    lines += bench_lines(_load(folder / "bench.json"))
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: device_summary.py FOLDER (a folder benchmarks/device_check.sh wrote)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    lines = summary(folder)
    print("\n".join(lines))
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
