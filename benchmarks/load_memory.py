"""Peak host memory of loading a checkpoint with `load_model`, against the weights' bytes on disk.

Run in a fresh process so the high-water mark (VmHWM) belongs to the load:
    .venv/bin/python benchmarks/load_memory.py FOLDER [--dtype float32] [--device cpu]
    .venv/bin/python benchmarks/load_memory.py --save demo-2b FOLDER   (writes the demo checkpoint first)
Prints one line of figures in MB: weights on disk, resident memory before and after, and the peak the
load added (VmHWM after, less the resident memory before)."""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over an exec from the
    process that spawned this one, so under pytest it would report pytest's own peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def weights_mb(folder: Path) -> float:
    return sum(path.stat().st_size for pattern in ("*.safetensors", "*.bin") for path in folder.glob(pattern)) / 2**20


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--save", metavar="DEMO", help="write this demo model to FOLDER first, in this process")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from potwatch.models.registry import load_model, save_demo

    if args.save:
        save_demo(args.save, args.folder)
        return
    start = resident_mb()
    if peak_mb() > start + 1:  # the imports' peak would hide the load's: say so rather than guess
        print(f"note: the imports peaked {peak_mb() - start:.1f} MB above the resident memory at the start")
    adapter = load_model(str(args.folder), dtype=args.dtype, device=args.device)
    print(f"weights {weights_mb(args.folder):.1f} MB on disk; resident {start:.1f} MB before, {resident_mb():.1f} MB "
          f"after; peak added by the load {peak_mb() - start:.1f} MB ({adapter.model.dtype}, {adapter.device})")


if __name__ == "__main__":
    main(sys.argv[1:])
