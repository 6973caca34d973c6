"""Train the `tiny` model on the synthetic world and save it as an ordinary checkpoint folder.

    OMP_NUM_THREADS=1 .venv/bin/python training/train_tiny.py --out assets/tiny --steps 3000 --seed 0

Reproducible from the seed (with the same thread count). Trains with the full cache only. The first
`--warm-up-steps` steps use short, clean streams with one large object and ask its colour; then
streams of 4-96 s with 0-3 events anywhere in them (easy ones still mixed in), one to three questions
at the end, free text and multiple choice. Writes to `--out`: the checkpoint (config.json,
model.safetensors, tokenizer files with the chat template, preprocessor_config.json),
`training_curve.png` and `training.json` (loss, held-out letter accuracy during training, and the
held-out accuracy of a full-cache `StreamSession` at the end). Held-out streams come from seed
`--seed + 10_000`; `potwatch make-qa` sets use their own seeds."""

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
from potwatch.models.tiny_build import TINY_MAX_PIXELS, preprocessor_config, tiny_config, train_tokenizer
from potwatch.world.stream import easy_stream, random_stream
from potwatch.world.render import render_sampled
from potwatch.world.questions import questions_for
from world_samples import IGNORE, build_sample, collate, pick_turns, turn_text

SIZES = ((224, 168), (320, 240), (256, 144))  # render sizes (4:3 twice as often as 16:9)
EASY_SHARE = 0.3  # batches of short, clean streams with one object in view most of the time
# Before it can find a brief event in a long stream, the model must learn to see at all. On the full mix
# from the first step, answers stayed at the language prior for 700 steps (measured); colour questions
# on easy streams alone start to use the frames after about 200 steps, and after 60-80 with objects
# twice the size (a mix of four kinds at that size was still blind at 200). So training opens with those.
WARM_UP_SCALES = (1.8, 2.2)  # large objects first: colours were learnt in 60-80 steps at 2x, ~200 at 1x
WARM_UP_FLOOR = 0.1  # share of warm-up batches kept to the end
WARM_UP_BATCH = 16


def world_texts(seed: int, streams: int = 3000) -> list[str]:
    """Everything the model will read or write: the system prompt, questions, answers, choice prompts."""
    rng = random.Random(seed)
    texts = [DEFAULT_SYSTEM_PROMPT]
    for _ in range(streams):
        for question in questions_for(random_stream(rng), rng):
            texts += [turn_text(question, False)[0], question.answer, turn_text(question, True)[0]]
    return texts


def new_model(seed: int, out: Path):
    tokenizer = train_tokenizer(world_texts(seed))
    config = tiny_config(tokenizer)
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    processor = qwen_processor(preprocessor_config(), config, TINY_MAX_PIXELS)
    return QwenVLAdapter(model, tokenizer, processor, name=str(out), is_demo=False)


def resumed_model(folder: str, out: Path):
    """A saved checkpoint to train further (a fresh optimiser and learning-rate schedule)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = qwen_processor(preprocessor_config(), model.config, TINY_MAX_PIXELS)
    return QwenVLAdapter(model, tokenizer, processor, name=str(out), is_demo=False)


def plan_batch(tokens_per_group, rng: random.Random, tokens_per_step: int,
               warm_up: bool = False, warm_up_share: float = 0.0) -> list[tuple[list, list]]:
    """(frames, turns) of streams of one length (log-uniform 4-96 s; or short easy ones, see
    `easy_stream`), as many as fit `tokens_per_step`."""
    if warm_up or rng.random() < warm_up_share:  # learn to see: the colour of one large object, free text
        plans = []
        for _ in range(WARM_UP_BATCH):
            stream = easy_stream(rng, WARM_UP_SCALES)
            colour = next(q for q in questions_for(stream, rng) if q.kind == "colour")
            plans.append((render_sampled(stream, SIZES[0]), [turn_text(colour, False)]))
        return plans
    easy = rng.random() < EASY_SHARE
    stream = easy_stream(rng) if easy else random_stream(rng)
    seconds = stream.seconds
    size = rng.choice(SIZES[:2] * 2 + SIZES[2:])
    per_stream = int(seconds) * tokens_per_group(size[1], size[0]) + 120
    count = max(2, min(32, tokens_per_step // per_stream))
    plans = []
    for index in range(count):
        if index:
            stream = easy_stream(rng) if easy else random_stream(rng, seconds=seconds)
        plans.append((render_sampled(stream, size), pick_turns(questions_for(stream, rng), rng)))
    return plans


class WorldBatches(torch.utils.data.IterableDataset):
    """Endless training batches, rendered in a worker process beside the training loop. The vision
    tower and the embeddings are trained, so a batch carries frames and texts, not embeddings."""

    def __init__(self, tokens_per_group, seed: int, tokens_per_step: int, warm_up_steps: int):
        self.tokens_per_group, self.seed, self.tokens_per_step = tokens_per_group, seed, tokens_per_step
        self.warm_up_steps = warm_up_steps

    def __iter__(self):
        torch.set_num_threads(1)
        rng = random.Random(self.seed)
        step = 0
        while True:
            # after the warm-up its batches fade out over 3 x as many steps, to a floor: switching to the
            # full mix at once spiked the loss and the model went blind again (measured)
            fade = (step - self.warm_up_steps) / (3 * max(self.warm_up_steps, 1))
            share = max(WARM_UP_FLOOR, 1.0 - fade)
            yield plan_batch(self.tokens_per_group, rng, self.tokens_per_step,
                             warm_up=step < self.warm_up_steps, warm_up_share=share)
            step += 1


def loss_of(adapter, embeds, positions, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = adapter.model.model.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    picked = hidden.last_hidden_state[targets != IGNORE]
    logits = adapter.model.lm_head(picked)
    wanted = targets[targets != IGNORE]
    return torch.nn.functional.cross_entropy(logits, wanted), logits.argmax(-1), wanted


def held_out_letters(seed: int, count: int = 48) -> list:
    """Fixed held-out (frames, turn) pairs, one multiple-choice turn each, for the curve's accuracy. Frames
    and texts, not samples: a sample's embeddings belong to the weights that made it."""
    rng = random.Random(seed)
    plans = []
    for _ in range(count):
        stream = random_stream(rng, max_s=60.0)
        question = rng.choice(questions_for(stream, rng))
        plans.append((render_sampled(stream, (320, 240)), [turn_text(question, True)]))
    return plans


def letter_accuracy(adapter, plans) -> float:
    right = 0
    with torch.no_grad():
        for start in range(0, len(plans), 8):
            samples = [build_sample(adapter, frames, turns) for frames, turns in plans[start:start + 8]]
            embeds, positions, targets = collate(samples)
            _, predicted, wanted = loss_of(adapter, embeds, positions, targets)
            # each sample's first answer target is its letter
            firsts = (targets != IGNORE).float().cumsum(1)
            first_mask = ((firsts == 1) & (targets != IGNORE))[targets != IGNORE]
            right += int((predicted[first_mask] == wanted[first_mask]).sum())
    return right / len(plans)


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = resumed_model(args.resume, out) if args.resume else new_model(args.seed, out)
    model = adapter.model
    model.train()
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny: {params / 1e6:.2f}M parameters, vocabulary {len(adapter.tokenizer)}, {args.threads} thread(s)", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = min(50, args.steps // 10)  # short: the model learns to see only at a high rate (60-80 steps at 2e-3)

    def rate(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    held_out = held_out_letters(args.seed + 10_000)
    curve = {"step": [], "loss": [], "tokens_right": [], "eval_step": [], "eval_letters": []}
    started = time.perf_counter()
    running = []
    batches = torch.utils.data.DataLoader(
        WorldBatches(adapter.processor.tokens_per_group, args.seed, args.tokens_per_step, args.warm_up_steps),
        batch_size=None, num_workers=1, prefetch_factor=4,
    )
    for step, plans in zip(range(args.steps), batches):
        embeds, positions, targets = collate([build_sample(adapter, frames, turns) for frames, turns in plans])
        loss, predicted, wanted = loss_of(adapter, embeds, positions, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running.append((loss.item(), (predicted == wanted).float().mean().item()))
        if (step + 1) % 25 == 0:
            loss_mean = sum(r[0] for r in running) / len(running)
            right_mean = sum(r[1] for r in running) / len(running)
            running.clear()
            curve["step"].append(step + 1)
            curve["loss"].append(loss_mean)
            curve["tokens_right"].append(right_mean)
            elapsed = time.perf_counter() - started
            print(f"step {step + 1}: loss {loss_mean:.3f}, answer tokens right {right_mean:.1%}, "
                  f"{elapsed / (step + 1):.2f} s/step, {elapsed / 60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            accuracy = letter_accuracy(adapter, held_out)
            model.train()
            curve["eval_step"].append(step + 1)
            curve["eval_letters"].append(accuracy)
            print(f"  held-out letters right: {accuracy:.1%}", flush=True)
            save(adapter, out)
        if time.perf_counter() - started > args.minutes * 60:
            print(f"stopping at step {step + 1}: the {args.minutes}-minute budget is spent", flush=True)
            break
    model.eval()
    save(adapter, out)
    report = {
        "seed": args.seed,
        "resumed_from": args.resume,
        "before": _earlier_report(args.resume),
        "threads": args.threads,
        "steps": curve["step"][-1] if curve["step"] else 0,
        "minutes": (time.perf_counter() - started) / 60,
        "parameters": params,
        "tokens_per_step": args.tokens_per_step,
        "lr": args.lr,
        "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1))
    plot_curve(report, out / "training_curve.png")
    return report


def _earlier_report(folder: str | None) -> dict | None:
    """The training report of the checkpoint a run resumed, so the whole history stays in one file."""
    path = Path(folder) / "training.json" if folder else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def save(adapter, out: Path) -> None:
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))


def plot_curve(report: dict, path: Path) -> None:
    """Loss and answer tokens right over steps, the runs a resumed checkpoint went through joined end to
    end; the held-out multiple-choice share where a run measured it with its current weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, earlier = [], report
    while earlier:
        runs.insert(0, earlier)
        earlier = earlier.get("before")
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    right_axis = loss_axis.twinx()
    offset = 0
    for index, run in enumerate(runs):
        curve = run["curve"]
        first = index == 0
        steps = [offset + step for step in curve["step"]]
        loss_axis.plot(steps, curve["loss"], color="tab:blue", label="training loss (answer tokens)" if first else None)
        right_axis.plot(steps, curve["tokens_right"], color="tab:orange", alpha=0.6,
                        label="answer tokens right (training batches)" if first else None)
        if run.get("resumed_from") is not None or len(runs) == 1:  # earlier runs' held-out curve was stale
            right_axis.plot([offset + s for s in curve["eval_step"]], curve["eval_letters"], "o-", color="tab:green",
                            label="held-out multiple choice right")
        if index:
            loss_axis.axvline(offset, color="grey", linestyle=":", linewidth=1)
        offset = steps[-1] if steps else offset
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    right_axis.set_ylim(0, 1)
    right_axis.set_ylabel("share right")
    figure.legend(loc="center right")
    figure.suptitle("potwatch tiny: training on the synthetic world")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="assets/tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=60.0, help="stop early when this much time is spent")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tokens-per-step", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--resume", default=None, help="train this saved checkpoint further instead of a new model")
    parser.add_argument("--warm-up-steps", type=int, default=150,
                        help="first steps on short streams of one large object, asking its colour (default 150)")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
