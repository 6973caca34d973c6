"""Attention that reads the cache's slot counts: a slot standing for c tokens gets log(c) added to its
logit, so it draws the attention mass of c identical tokens (KeepKV's "electoral votes"); a slot that
stands for none (count 0, a hole) gets -inf and draws nothing.

It is registered with transformers' `AttentionInterface` under a name of its own and installed on a
model's language model only when a session's policy keeps counts. The counts arrive per call in the
attention kwargs (`CappedLayer.update` adds them to the dict transformers then unpacks into this
function), so the model holds no per-session state: a call without counts (a session with another
policy, on the same shared model, in any thread) goes to the implementation that was there before,
with the same arguments, and gives exactly what it gave before."""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from potwatch.errors import UserError

PREFIX = "potwatch_counts_"
SUPPORTED = ("sdpa", "eager")  # implementations whose masks this function reads (bool or additive float)
# Most bytes of one [heads, queries, keys] bias mask: a block of 600 tokens over 20K keys goes through in
# chunks of queries this size instead of a mask of hundreds of MB.
MASK_CHUNK_BYTES = 16 << 20

_install_lock = threading.Lock()


def count_attention_name(base: str) -> str:
    """The registered name of the count-aware attention that falls back to `base`."""
    return PREFIX + base


def install_count_attention(attention_modules: list[torch.nn.Module]) -> None:
    """Make the language model whose attention modules these are call the count-aware attention.
    Idempotent and safe from any thread; raises a UserError for an implementation it cannot wrap."""
    config = attention_modules[0].config
    with _install_lock:
        base = config._attn_implementation
        if base.startswith(PREFIX):
            return
        if base not in SUPPORTED:
            raise UserError(
                f"This policy adds slot counts to attention, which works with sdpa or eager attention, not "
                f"'{base}'; load the model with attn_implementation='sdpa' or pick another policy such as tar_van."
            )
        name = count_attention_name(base)
        if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])  # the same masks as before
            AttentionInterface.register(name, _count_attention(base))
        config._attn_implementation = name


def _count_attention(base: str):
    def forward(module, query, key, value, attention_mask, slot_counts=None, **kwargs):
        if slot_counts is None:
            return _base_attention(base, module)(module, query, key, value, attention_mask, **kwargs)
        return count_biased_attention(module, query, key, value, attention_mask, slot_counts, **kwargs)

    return forward


def _base_attention(base: str, module: torch.nn.Module):
    if base == "eager":  # each modeling file has its own eager function; use the module's
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[base]


def count_biased_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, slot_counts: torch.Tensor, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **_) -> tuple[torch.Tensor, None]:
    """softmax(q·k·scaling + log(count) + mask) v for query [B, Hq, q, D], key/value [B, Hkv, k, D] (GQA:
    each KV head serves Hq / Hkv query heads) and slot_counts [Hkv, k]. The mask is the model's (bool,
    or additive float, [B or 1, 1, q, k]); None means causal for a block's own tokens (the last q keys)
    and nothing masked for one query. Returns (output [B, q, Hq, D], None), like transformers' sdpa."""
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    group = heads // key.shape[1]
    bias = slot_counts[:, :k_len].log().to(query.dtype).repeat_interleave(group, dim=0)[None, :, None, :]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    allowed = attention_mask
    if attention_mask is None and causal and q_len > 1:
        first = k_len - q_len  # the block's own tokens are the last q_len keys: each sees itself and before
        allowed = torch.arange(k_len, device=query.device)[None, :] <= first + torch.arange(q_len, device=query.device)[:, None]
        allowed = allowed[None, None]
    out = query.new_empty(batch, heads, q_len, value.shape[-1])
    chunk = max(1, MASK_CHUNK_BYTES // (heads * k_len * query.element_size()))
    for start in range(0, q_len, chunk):
        end = min(q_len, start + chunk)
        mask = bias  # broadcast over the batch and the queries
        if allowed is not None:
            part = allowed[:, :, start:end] if allowed.shape[2] > 1 else allowed
            if part.dtype == torch.bool:
                mask = torch.where(part, mask, float("-inf"))
            else:
                mask = mask + part
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end], key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
            enable_gqa=group > 1,
        )
    return out.transpose(1, 2).contiguous(), None
