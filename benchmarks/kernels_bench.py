"""Time each Triton kernel against its plain-torch reference on a CUDA GPU, at Qwen2-VL-2B's KV
geometry (28 layers x 2 KV heads x head_dim 128, bfloat16, ~20k tokens), and check they agree.

    .venv/bin/python benchmarks/kernels_bench.py [--tokens 20000] [--repeats 20] [--json figures.json]

Prints ms and effective GB/s (bytes the op must move / time) per op, the kernel's speed-up over the
reference and their largest difference (0 where the kernel is bit-exact), and with --json writes the
same rows. Without a CUDA GPU or without triton it prints one "skipped" line and exits 0: the kernels'
correctness is tested on the CPU by tests/test_kernels_triton.py under TRITON_INTERPRET=1, and compiled
on a GPU by the same tests with POTWATCH_TEST_DEVICE=cuda (benchmarks/device_check.sh runs both)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

LAYERS, KV_HEADS, HEAD_DIM, DTYPE = 28, 2, 128, torch.bfloat16
GRID_CELLS = 18 * 18  # patch coordinates per frame for the TaR table


def elapsed_ms(fn, repeats: int, setup=None) -> float:
    """Median milliseconds of fn() over `repeats` runs after warm-up; setup() runs untimed before each."""
    times = []
    for i in range(repeats + 3):
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


ROWS: list[dict] = []  # every op's figures, for --json


def report(name: str, nbytes: int, kernel_ms: float, reference_ms: float, error: float) -> None:
    rate = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    print(f"{name:<22} kernel {kernel_ms:8.3f} ms {rate(kernel_ms):7.1f} GB/s   reference {reference_ms:8.3f} ms "
          f"{rate(reference_ms):7.1f} GB/s   speed-up {reference_ms / kernel_ms:5.2f}x   max |diff| {error:.3g}",
          flush=True)
    ROWS.append({"op": name, "bytes": nbytes, "kernel_ms": kernel_ms, "reference_ms": reference_ms,
                 "kernel_gb_s": rate(kernel_ms), "reference_gb_s": rate(reference_ms),
                 "speed_up": reference_ms / kernel_ms, "max_abs_difference": error})


def bench_tar(tokens: int, repeats: int) -> None:
    from potwatch.kernels.tar_similarity import tar_similarity_reference
    from potwatch.kernels.tar_similarity_triton import tar_similarity

    rows = LAYERS * KV_HEADS
    keys = torch.randn(rows, tokens, HEAD_DIM, device="cuda").to(DTYPE)
    table = torch.nn.functional.normalize(torch.randn(rows * (GRID_CELLS + 1), HEAD_DIM, device="cuda"), dim=-1)
    slot = torch.randint(GRID_CELLS + 1, (rows, tokens), device="cuda") + \
        torch.arange(rows, device="cuda")[:, None] * (GRID_CELLS + 1)
    got, want = tar_similarity(keys, table, slot)[0], tar_similarity_reference(keys, table, slot)[0]
    nbytes = keys.numel() * keys.element_size() + slot.numel() * 8 + rows * tokens * 8
    report("TaR similarity", nbytes, elapsed_ms(lambda: tar_similarity(keys, table, slot), repeats),
           elapsed_ms(lambda: tar_similarity_reference(keys, table, slot), repeats), float((got - want).abs().max()))


def bench_move_rows(tokens: int, repeats: int) -> None:
    from potwatch.compression import capped_cache
    from potwatch.kernels.move_rows_triton import move_rows

    rows = LAYERS * KV_HEADS
    source = torch.randn(rows, tokens, HEAD_DIM, device="cuda").to(DTYPE)
    kept = tokens * 3 // 4
    keep = torch.rand(rows, tokens, device="cuda").argsort(dim=1)[:, :kept].sort(dim=1).values
    work = source.clone()
    reset = lambda: work.copy_(source)  # noqa: E731
    dispatch = capped_cache.triton_ready
    capped_cache.triton_ready = lambda tensor: False  # the plain-torch path, on the GPU
    try:
        reset()
        capped_cache.move_rows(work, keep)
        want = work.clone()
        reset()
        move_rows(work, keep)
        error = float((work.float() - want.float()).abs().max())
        nbytes = 2 * rows * kept * HEAD_DIM * source.element_size()
        report("compaction (K or V)", nbytes, elapsed_ms(lambda: move_rows(work, keep), repeats, reset),
               elapsed_ms(lambda: capped_cache.move_rows(work, keep), repeats, reset), error)
    finally:
        capped_cache.triton_ready = dispatch


def bench_quant(tokens: int, repeats: int) -> None:
    from potwatch.kernels import kv_quant, kv_quant_triton

    x = (torch.randn(LAYERS, KV_HEADS, tokens, HEAD_DIM, device="cuda") +
         torch.randn(HEAD_DIM, device="cuda") * 8).to(DTYPE)
    for bits in (8, 4):
        q, ref = kv_quant_triton.quantize(x, bits, 32, True), kv_quant.quantize_reference(x, bits, 32, True)
        code_diff = float((kv_quant.unpack_codes(q) - kv_quant.unpack_codes(ref)).abs().max())
        nbytes = x.numel() * x.element_size() + q.nbytes
        report(f"quantise int{bits} keys", nbytes,
               elapsed_ms(lambda: kv_quant_triton.quantize(x, bits, 32, True), repeats),
               elapsed_ms(lambda: kv_quant.quantize_reference(x, bits, 32, True), repeats), code_diff)
        back = kv_quant_triton.dequantize(ref)
        error = float((back.float() - kv_quant.dequantize_reference(ref).float()).abs().max())
        report(f"dequantise int{bits} keys", nbytes, elapsed_ms(lambda: kv_quant_triton.dequantize(ref), repeats),
               elapsed_ms(lambda: kv_quant.dequantize_reference(ref), repeats), error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per (layer, KV head) row")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures here as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("kernels_bench: no CUDA GPU: skipped")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernels_bench: triton is not installed: skipped")
        return 0
    print(f"kernels_bench on {torch.cuda.get_device_name()}: {LAYERS} layers x {KV_HEADS} KV heads x "
          f"head_dim {HEAD_DIM}, {str(DTYPE).removeprefix('torch.')}, {args.tokens} tokens; median of {args.repeats}")
    bench_tar(args.tokens, args.repeats)
    bench_move_rows(args.tokens, args.repeats)
    bench_quant(args.tokens, args.repeats)
    if args.json:
        import triton

        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "geometry": {"layers": LAYERS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
                                    "dtype": str(DTYPE).removeprefix("torch."), "tokens": args.tokens},
                       "repeats": args.repeats, "ops": ROWS}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
