"""Change-aware ingest (`--ingest changed`): a new temporal group's visual tokens that barely changed
against the same patch when it was last sent never reach the language model.

A fixed camera watching an empty room sends the same picture again and again; every copy costs a
prefill and then a compression pass that throws it away. Here, after the vision tower, each visual
token is compared with the embedding its patch (row, col) had when it was last sent: its change is
the relative L2 distance |e - r| / |r|. Tokens whose change passes the threshold are kept, at most
`ceiling` of them a group (the most changed first); a group always keeps at least `floor` tokens,
those whose patch was sent longest ago (the most salient, farthest from the group's mean, first among
equals), so time and "now" stay answerable and a quiet scene is refreshed patch by patch rather than
through the same few patches (which cost 2 points at the fidelity table's tightest cap).

Kept tokens keep their position ids and patch metadata: ids with holes are what compression already
makes, so every policy, the cap and the retention map count them as any other token. Text tokens in a
block (SmolVLM's and Qwen3-VL's per-frame labels) are always kept.

The references move only when a block has reached the cache (`commit`): a block that fails leaves the
filter as it was, as the session's positions and cache are."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.errors import UserError
from potwatch.models.adapter import Block

INGEST_MODES = ("all", "changed")
DEFAULT_CHANGE_THRESHOLD = 0.15  # relative L2 change of a token's embedding; see benchmarks/README (ingest)
FLOOR_SHARE = 1 / 16  # a group keeps at least this share of its visual tokens (and at least MIN_FLOOR)
MIN_FLOOR = 2
NEVER = 1 << 40  # the age of a patch never sent


def check_ingest(mode: str) -> str:
    if mode not in INGEST_MODES:
        raise UserError(f"Unknown ingest mode '{mode}'; use all (every visual token) or changed (only what changed).")
    return mode


def check_change_threshold(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 10) or math.isnan(value):
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise UserError(
            f"The change threshold {shown} is not a number from 0 to 10; give one like --change-threshold 0.15 "
            "(0 sends every token that moved at all)."
        )
    return float(value)


@dataclass
class IngestCounts:
    """What change-aware ingest did so far: visual tokens the tower made and those sent on."""

    visual_tokens: int = 0
    sent_tokens: int = 0


class ChangeFilter:
    """Keeps the visual tokens of each new group that changed since their patch was last sent."""

    def __init__(self, threshold: float = DEFAULT_CHANGE_THRESHOLD, ceiling: float = 1.0):
        self.threshold = threshold
        self.ceiling = ceiling  # share of a group's visual tokens it may send at most
        self.reference: torch.Tensor | None = None  # [rows, cols, hidden]: each patch's embedding last sent
        self.age: torch.Tensor | None = None  # [rows, cols]: groups since the patch was last sent (NEVER: not yet)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_counts = (0, 0)
        self.counts = IngestCounts()

    def select(self, block: Block) -> Block:
        """The block with only the tokens to send, in their order; `commit` once it reached the cache."""
        meta = block.meta
        is_patch = (meta.kind == int(TokenKind.VISION)) & (meta.row >= 0)
        keep = torch.ones(len(block), dtype=torch.bool)
        if bool(is_patch.any()):
            reference, age = self._grid(block, is_patch)
            vectors = block.embeds[0].detach().float().cpu()
            for frame in torch.unique(meta.frame[is_patch]).tolist():  # one temporal group at a time, in order
                index = torch.nonzero(is_patch & (meta.frame == frame)).flatten()
                rows, cols = meta.row[index].long(), meta.col[index].long()
                chosen = self._choose(vectors[index], reference[rows, cols], age[rows, cols])
                keep[index] = chosen
                reference[rows[chosen], cols[chosen]] = vectors[index[chosen]]
                age += 1
                age[rows[chosen], cols[chosen]] = 0
            self._pending = (reference, age)
        self._pending_counts = (int(is_patch.sum()), int((is_patch & keep).sum()))
        return block if bool(keep.all()) else block.take(torch.nonzero(keep).flatten())

    def commit(self) -> None:
        """The selected block reached the cache: its tokens become their patches' references."""
        if self._pending is not None:
            self.reference, self.age = self._pending
        self._pending = None
        made, sent = self._pending_counts
        self.counts.visual_tokens += made
        self.counts.sent_tokens += sent
        self._pending_counts = (0, 0)

    def _grid(self, block: Block, is_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Working copies of the references, grown to hold this block's patches."""
        rows = int(block.meta.row[is_patch].max()) + 1
        cols = int(block.meta.col[is_patch].max()) + 1
        hidden = block.embeds.shape[-1]
        reference = torch.zeros(rows, cols, hidden)
        age = torch.full((rows, cols), NEVER, dtype=torch.long)
        if self.reference is not None and self.reference.shape[-1] == hidden:
            r, c = min(rows, self.reference.shape[0]), min(cols, self.reference.shape[1])
            reference[:r, :c] = self.reference[:r, :c]
            age[:r, :c] = self.age[:r, :c]
        return reference, age

    def _choose(self, vectors: torch.Tensor, reference: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """Which of one group's visual tokens [n, hidden] to send, against their patches' references and
        ages (groups since each was last sent): [n] bool."""
        n = vectors.shape[0]
        change = (vectors - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-6)
        change[age >= NEVER] = math.inf  # a patch never sent has changed without bound
        floor = min(n, max(MIN_FLOOR, math.ceil(n * FLOOR_SHARE)))
        ceiling = max(floor, math.floor(n * self.ceiling))
        changed = torch.nonzero(change > self.threshold).flatten()
        if len(changed) > ceiling:  # the most changed first
            changed = changed[torch.argsort(change[changed], descending=True, stable=True)[:ceiling]]
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[changed] = True
        if len(changed) < floor:  # then the stalest of the rest, the most salient first among equals
            saliency = (vectors - vectors.mean(dim=0)).norm(dim=1)
            order = age.double() + saliency.double() / (2 * float(saliency.max()) + 1e-6)  # saliency < 1 age step
            order[chosen] = -math.inf
            chosen[torch.argsort(order, descending=True, stable=True)[: floor - len(changed)]] = True
        return chosen
