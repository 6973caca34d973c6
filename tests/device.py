"""Where the model tests run, and how close "equal" is there: one switch, `POTWATCH_TEST_DEVICE`.

- `cpu` (the default): the suite as it always ran. CUDA is hidden from the test process
  (`CUDA_VISIBLE_DEVICES=""`, set before torch looks), so a model loaded by name, the CLI run
  in-process and every subprocess stay on the CPU too, and the Triton kernels' tests run under
  Triton's interpreter (`TRITON_INTERPRET=1`).
- `cuda` or `cuda:N`: the demo and tiny adapters load on that GPU in float32 (`load_test_model`,
  tests/families.py `family_adapter`), the caches and tensors the tests build go to the adapter's
  device, comparisons move results to the CPU (`assert_close`), and the Triton kernels' tests run
  compiled. Without a CUDA GPU the run stops at start with one line (tests/conftest.py).

Tolerances (absolute; relative as each test had it). CPU figures are the ones the suite always
used. On CUDA the suite turns TF32 off (`torch.backends.cuda.matmul.allow_tf32`,
`torch.backends.cudnn.allow_tf32`, float32 matmul precision "highest"): TF32 keeps 10 mantissa bits,
about 1e-3 relative per product, which no exactness tolerance should absorb. What is left are float32
kernels that sum in another order than the oracle (cuBLAS tile and split-K choices, SDPA's
memory-efficient kernel against the math path, blocks of another length): a few float32 ulps per
reduction, about 1e-6 of the demo models' logits, so the CUDA figures leave ten times the CPU's room:

    name       what is compared                                       cpu     cuda
    EXACT      logits and K/V, streamed against one stock forward     1e-5    1e-4
    ROTATION   keys rotated to new positions against keys made there  2e-5    1e-4
    EMBED      vision embeddings, blocks apart against all at once    1e-6    1e-5
    QUERY      captured query statistics against the model's own      1e-5    1e-4
    KERNEL     Triton kernels against their torch references          1e-6    1e-5

Tests that run bfloat16 on purpose keep their own tolerances (a bfloat16 step is 2^-8 relative).
Every `assert_close` records its largest deviation, so a device run prints how much of each
tolerance it used (tests/conftest.py), which is how the CUDA figures get checked when a GPU is lent."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

SWITCH = "POTWATCH_TEST_DEVICE"
REQUESTED = os.environ.get(SWITCH, "").strip() or "cpu"
ON_CUDA = REQUESTED == "cuda" or REQUESTED.startswith("cuda:")

if not ON_CUDA:
    # Before torch initialises CUDA: nothing in a CPU run may land on a GPU by default. triton reads
    # TRITON_INTERPRET once, when first imported, and torch imports it early (torch._dynamo).
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402  (after the environment above)

TEST_DEVICE = torch.device("cuda:0" if REQUESTED == "cuda" else REQUESTED) if ON_CUDA else torch.device("cpu")


def device_problem() -> str | None:
    """Why the switch cannot be honoured here, in one sentence; None when it can."""
    if REQUESTED != "cpu" and not ON_CUDA:
        return f"{SWITCH}={REQUESTED} is not a test device; use cpu (the default) or cuda (cuda:N)."
    if not ON_CUDA:
        return None
    if not torch.cuda.is_available():
        return (f"{SWITCH}={REQUESTED} but torch {torch.__version__} finds no CUDA GPU here; "
                f"unset {SWITCH} to test on the CPU, or install a CUDA build of torch.")
    if TEST_DEVICE.index is not None and TEST_DEVICE.index >= torch.cuda.device_count():
        return f"{SWITCH}={REQUESTED} but this machine has {torch.cuda.device_count()} CUDA GPU(s)."
    return None


def exact_float32() -> None:
    """float32 matmuls and convolutions in full float32 on CUDA (no TF32), for the whole run."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float
    what: str


def _pick(cpu: float, cuda: float) -> float:
    return cuda if ON_CUDA else cpu


EXACT = Tolerance("EXACT", _pick(1e-5, 1e-4), "logits and K/V, streamed against one stock forward")
ROTATION = Tolerance("ROTATION", _pick(2e-5, 1e-4), "keys rotated to new positions against keys computed there")
EMBED = Tolerance("EMBED", _pick(1e-6, 1e-5), "vision embeddings, blocks apart against all at once")
QUERY = Tolerance("QUERY", _pick(1e-5, 1e-4), "captured query statistics against the model's own queries")
KERNEL = Tolerance("KERNEL", _pick(1e-6, 1e-5), "Triton kernels against their torch references")
TOLERANCES = (EXACT, ROTATION, EMBED, QUERY, KERNEL)

# tolerance name -> [largest |difference|, largest share of the bound allclose allows (atol + rtol |expected|),
# comparisons]
_worst: dict[str, list] = {}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance, rtol: float = 1e-5,
                 scale: float = 1.0) -> None:
    """`torch.allclose` on the CPU (either side may live on the GPU), with atol = tolerance.atol x scale;
    the largest difference is recorded for the run's summary and named when the check fails."""
    atol = tolerance.atol * scale
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, f"{tolerance.name}: shapes {tuple(actual.shape)} and {tuple(expected.shape)}"
    difference = (actual.double() - expected.double()).abs()
    worst = float(difference.max()) if actual.numel() else 0.0
    share = float((difference / (atol + rtol * expected.double().abs())).max()) if actual.numel() else 0.0
    record = _worst.setdefault(tolerance.name, [0.0, 0.0, 0])
    record[0], record[1], record[2] = max(record[0], worst), max(record[1], share), record[2] + 1
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (
        f"{tolerance.name} on {TEST_DEVICE}: max |difference| {worst:.3g} over atol {atol:.3g} (rtol {rtol:g})")


def on_device(tensor: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """`tensor` (built on the CPU, where seeded generators give the same numbers on every machine) on
    `device`, by default the test device."""
    return tensor.to(TEST_DEVICE if device is None else device)


def load_test_model(name: str, **options):
    """A model by name (demo, tiny, a folder) on the test device, in float32 unless asked otherwise."""
    from potwatch.models.registry import load_model

    options.setdefault("dtype", "float32")
    return load_model(name, device=str(TEST_DEVICE), **options)


def deviation_summary() -> list[str]:
    """One line per tolerance used in this run: the largest difference seen against the atol."""
    lines = []
    for tolerance in TOLERANCES:
        if tolerance.name in _worst:
            worst, share, count = _worst[tolerance.name]
            lines.append(f"{tolerance.name:<8} atol {tolerance.atol:.0e}: max |difference| {worst:.3g}, at most "
                         f"{100 * share:.1f}% of the tolerance, over {count} comparisons ({tolerance.what})")
    return lines


def write_deviations(path: str) -> None:
    """The same figures as JSON, for benchmarks/device_check.sh to keep beside its other figures."""
    figures = {t.name: dict(zip(("max_abs_difference", "max_share_of_tolerance", "comparisons"), _worst[t.name]),
                            atol=t.atol) for t in TOLERANCES if t.name in _worst}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"device": str(TEST_DEVICE), "tf32": False if ON_CUDA else None, "tolerances": figures}, handle,
                  indent=1)
