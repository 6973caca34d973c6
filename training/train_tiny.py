"""Train the `tiny` model on the synthetic world and save it as an ordinary checkpoint folder.

    OMP_NUM_THREADS=1 .venv/bin/python training/train_tiny.py --out /tmp/tiny --steps 4000 --minutes 80 --seed 0 --eval-every 1000

Reproducible from the seed (with the same thread count). Trains with the full cache only, in two stages:
1. `--vision-steps` steps on the vision tower alone: single temporal groups of frames and a loss on every
   visual token naming the object that covers it, its colour and its shape (world/labels.py), through a
   small linear probe on the tokens the language model reads. Dense and cheap: no language model runs.
2. Question steps (training/world_batches.py): streams whose maximum length grows from `--start-s` to
   96 s over `--curriculum-steps`, every question that applies asked at the end and some mid-stream with
   more video after them, free text and multiple choice; the per-token probe loss goes on beside the
   answer loss (weight `--probe-weight`), so the tokens keep saying what they show.
Writes to `--out`: the checkpoint (config.json, model.safetensors, tokenizer files with the chat template,
preprocessor_config.json), `training_curve.png` and `training.json` (losses, and held-out free-text
accuracy of a full-cache `StreamSession` at every `--eval-every` steps, on streams training never draws)."""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from potwatch.models.family_processors import qwen_processor
from potwatch.models.qwen_vl import DEFAULT_SYSTEM_PROMPT, QwenVLAdapter
from potwatch.models.tiny_build import (
    TINY_MARK,
    TINY_MAX_PIXELS,
    preprocessor_config,
    tiny_config,
    tiny_label,
    train_tokenizer,
)
from potwatch.world.labels import COLOUR_CLASSES, SHAPE_CLASSES
from potwatch.world.questions import questions_for
from potwatch.world.stream import random_stream
from evaluate_tiny import evaluate
from world_batches import WorldBatches
from world_samples import IGNORE, build_sample, collate, turn_text


def world_texts(seed: int, streams: int = 3000) -> list[str]:
    """Everything the model will read or write: the system prompt, questions, answers, choice prompts."""
    rng = random.Random(seed)
    texts = [DEFAULT_SYSTEM_PROMPT]
    for _ in range(streams):
        for question in questions_for(random_stream(rng), rng):
            texts += [turn_text(question, False)[0], question.answer, turn_text(question, True)[0]]
    return texts


def new_model(args, out: Path):
    tokenizer = train_tokenizer(world_texts(args.seed))
    config = tiny_config(tokenizer, hidden=args.hidden, layers=args.layers, vision_depth=args.vision_depth,
                         vision_width=args.vision_width, mrope_section=tuple(args.mrope_section))
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(args.seed)
    model = Qwen2VLForConditionalGeneration(config)
    setattr(model.config, TINY_MARK, tiny_label(sum(p.numel() for p in model.parameters())))
    processor = qwen_processor(preprocessor_config(), config, TINY_MAX_PIXELS)
    return QwenVLAdapter(model, tokenizer, processor, name=str(out), is_demo=False)


def resumed_model(folder: str, out: Path):
    """A saved checkpoint to train further (a fresh optimiser and learning-rate schedule)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = qwen_processor(preprocessor_config(), model.config, TINY_MAX_PIXELS)
    return QwenVLAdapter(model, tokenizer, processor, name=str(out), is_demo=False)


class TokenProbe(torch.nn.Module):
    """Linear read-outs of a visual token's object colour and shape: the dense signal of stage 1 (not saved
    with the model)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.colour = torch.nn.Linear(hidden, len(COLOUR_CLASSES))
        self.shape = torch.nn.Linear(hidden, len(SHAPE_CLASSES))

    def loss(self, embeds: torch.Tensor, colours: torch.Tensor, shapes: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Cross-entropy on both read-outs, and the share of object tokens whose shape is read right."""
        picked = embeds[colours != IGNORE]
        colours, shapes = colours[colours != IGNORE], shapes[shapes != IGNORE]
        colour_logits, shape_logits = self.colour(picked), self.shape(picked)
        loss = torch.nn.functional.cross_entropy(colour_logits, colours) + torch.nn.functional.cross_entropy(shape_logits, shapes)
        objects = shapes > 0
        right = (shape_logits.argmax(-1)[objects] == shapes[objects]).float().mean().item() if objects.any() else float("nan")
        return loss, right


def vision_step(adapter, probe: TokenProbe, items) -> tuple[torch.Tensor, float]:
    """The probe loss on a batch of temporal groups, the vision tower run once over all of them."""
    pixels, grids, colours, shapes = [], [], [], []
    for frames, colour, shape in items:
        values, grid = adapter.processor(frames)
        pixels.append(torch.from_numpy(values))
        grids.append(grid)
        colours.append(torch.as_tensor(colour))
        shapes.append(torch.as_tensor(shape))
    visual = adapter.model.model.visual
    embeds = visual(torch.cat(pixels), grid_thw=torch.tensor(grids)).pooler_output
    return probe.loss(embeds, torch.cat(colours), torch.cat(shapes))


def answer_loss(adapter, embeds, positions, targets) -> tuple[torch.Tensor, float]:
    hidden = adapter.model.model.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    picked = hidden.last_hidden_state[targets != IGNORE]
    logits = adapter.model.lm_head(picked)
    wanted = targets[targets != IGNORE]
    right = (logits.argmax(-1) == wanted).float().mean().item()
    return torch.nn.functional.cross_entropy(logits, wanted), right


def question_step(adapter, probe: TokenProbe, plans, probe_weight: float) -> tuple[torch.Tensor, dict]:
    samples = [build_sample(adapter, frames, stops, labels, gap, thinning) for frames, stops, labels, gap, thinning in plans]
    embeds, positions, targets, colours, shapes = collate(samples)
    loss, right = answer_loss(adapter, embeds, positions, targets)
    seen, shape_right = probe.loss(embeds, colours, shapes)
    return loss + probe_weight * seen, {"answer_loss": loss.item(), "probe_loss": seen.item(), "tokens_right": right,
                                        "shapes_right": shape_right}


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = resumed_model(args.resume, out) if args.resume else new_model(args, out)
    model = adapter.model
    model.train()
    torch.manual_seed(args.seed)
    probe = TokenProbe(model.config.text_config.hidden_size)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny: {params / 1e6:.2f}M parameters, vocabulary {len(adapter.tokenizer)}, {args.threads} thread(s)", flush=True)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(probe.parameters()), lr=args.lr, weight_decay=0.01,
                                  betas=(0.9, 0.98))
    warmup = min(50, args.steps // 10)

    def rate(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    curve: dict[str, list] = {"step": [], "kind": [], "loss": [], "answer_loss": [], "probe_loss": [], "tokens_right": [],
                              "shapes_right": [], "max_s": [], "eval_step": [], "eval_overall": [], "eval_by_kind": []}
    batches = WorldBatches(adapter.processor, args.seed, args.tokens_per_step, args.vision_steps, args.vision_groups,
                           args.curriculum_steps, args.start_s)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=1, prefetch_factor=4)
    started = time.perf_counter()
    running: list[dict] = []
    for step, (kind, plans) in zip(range(args.steps), loader):
        if kind == "vision":
            loss, shapes_right = vision_step(adapter, probe, plans)
            record = {"probe_loss": loss.item(), "shapes_right": shapes_right}
        else:
            loss, record = question_step(adapter, probe, plans, args.probe_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(probe.parameters()), 1.0)
        optimizer.step()
        schedule.step()
        running.append(record | {"loss": loss.item()})
        if (step + 1) % 25 == 0:
            means = {key: _mean([r.get(key) for r in running]) for key in ("loss", "answer_loss", "probe_loss",
                                                                            "tokens_right", "shapes_right")}
            running.clear()
            curve["step"].append(step + 1)
            curve["kind"].append(kind)
            curve["max_s"].append(batches.max_seconds(step) if kind == "questions" else None)
            for key, value in means.items():
                curve[key].append(value)
            elapsed = time.perf_counter() - started
            print(f"step {step + 1} ({kind}): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items() if v is not None)
                  + f", {elapsed / (step + 1):.2f} s/step, {elapsed / 60:.1f} min", flush=True)
        last = step + 1 == args.steps or time.perf_counter() - started > args.minutes * 60
        if step + 1 > args.vision_steps and ((step + 1) % args.eval_every == 0 or last):
            model.eval()
            with torch.no_grad():
                result = evaluate(adapter, args.eval_streams, seed=args.seed + 1000, max_s=60.0)
            model.train()
            curve["eval_step"].append(step + 1)
            curve["eval_overall"].append(result["overall"])
            curve["eval_by_kind"].append(result["by_kind"])
            print(f"  held-out free text right: {result['overall']:.1%} "
                  + " ".join(f"{k} {v:.0%}" for k, v in result["by_kind"].items()), flush=True)
            save(adapter, out)
        if last:
            if step + 1 < args.steps:
                print(f"stopping at step {step + 1}: the {args.minutes}-minute budget is spent", flush=True)
            break
    model.eval()
    save(adapter, out)
    report = {
        "seed": args.seed,
        "resumed_from": args.resume,
        "before": _earlier_report(args.resume),
        "arguments": vars(args),
        "threads": args.threads,
        "steps": curve["step"][-1] if curve["step"] else 0,
        "minutes": (time.perf_counter() - started) / 60,
        "parameters": params,
        "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1))
    plot_curve(report, out / "training_curve.png")
    return report


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _earlier_report(folder: str | None) -> dict | None:
    """The training report of the checkpoint a run resumed, so the whole history stays in one file."""
    path = Path(folder) / "training.json" if folder else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def save(adapter, out: Path) -> None:
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))


def plot_curve(report: dict, path: Path) -> None:
    """Losses over steps (runs a resumed checkpoint went through joined end to end), the shapes the probe
    reads right, and held-out free-text accuracy where a run measured it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, earlier = [], report
    while earlier:
        runs.insert(0, earlier)
        earlier = earlier.get("before")
    figure, loss_axis = plt.subplots(figsize=(7.5, 4.2))
    right_axis = loss_axis.twinx()
    offset = 0
    for index, run in enumerate(runs):
        curve = run["curve"]
        first = index == 0
        steps = [offset + step for step in curve["step"]]
        for key, colour, label in (("answer_loss", "tab:blue", "answer loss"), ("probe_loss", "tab:purple", "token probe loss")):
            points = [(s, v) for s, v in zip(steps, curve.get(key, [])) if v is not None]
            if points:
                loss_axis.plot(*zip(*points), color=colour, label=label if first else None)
        points = [(s, v) for s, v in zip(steps, curve.get("shapes_right", [])) if v is not None]
        if points:
            right_axis.plot(*zip(*points), color="tab:orange", alpha=0.5, label="object tokens' shape read right" if first else None)
        if curve.get("eval_step"):
            right_axis.plot([offset + s for s in curve["eval_step"]], curve.get("eval_overall", curve.get("eval_letters")),
                            "o-", color="tab:green", label="held-out answers right (free text)" if first else None)
        if index:
            loss_axis.axvline(offset, color="grey", linestyle=":", linewidth=1)
        offset = steps[-1] if steps else offset
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    right_axis.set_ylim(0, 1)
    right_axis.set_ylabel("share right")
    figure.legend(loc="upper center", ncol=2, fontsize=8)
    figure.suptitle("potwatch tiny: training on the synthetic world", y=0.02, va="bottom", fontsize=9)
    figure.tight_layout(rect=(0, 0.04, 1, 0.88))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="assets/tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--minutes", type=float, default=150.0, help="stop early when this much time is spent")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tokens-per-step", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-streams", type=int, default=16)
    parser.add_argument("--resume", default=None, help="train this saved checkpoint further instead of a new model")
    parser.add_argument("--vision-steps", type=int, default=300, help="stage 1: steps on the vision tower alone")
    parser.add_argument("--vision-groups", type=int, default=48, help="temporal groups in a stage-1 batch")
    parser.add_argument("--probe-weight", type=float, default=0.3, help="weight of the token probe in stage 2")
    parser.add_argument("--curriculum-steps", type=int, default=1500,
                        help="question steps over which the longest stream grows to 96 s")
    parser.add_argument("--start-s", type=float, default=16.0, help="the longest stream at the start of stage 2")
    parser.add_argument("--hidden", type=int, default=128, help="language model width (a new model)")
    parser.add_argument("--layers", type=int, default=4, help="language model layers (a new model)")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision tower layers (a new model)")
    parser.add_argument("--vision-width", type=int, default=96, help="vision tower width (a new model)")
    parser.add_argument("--mrope-section", type=int, nargs=3, default=(12, 2, 2), metavar=("TIME", "HEIGHT", "WIDTH"),
                        help="rotary frequency pairs for time, rows and columns (a new model; they sum to 16)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
