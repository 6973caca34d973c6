"""The eviction oracle's forward side, written for the tests and independent of the code it checks.

`AnswerOracle` wraps the session's forwards that return logits (the question and each answer token):
before each, it copies the K/V the cache holds into a stock transformers `DynamicCache` (decoded here
for 8/4 bits), and after it runs the stock model over the same block with the block's position ids.
Slot counts (merged slots, per-head budgets' empty slots) become an additive 4-D mask per layer:
log(count) for each (layer, KV head) slot, -inf where the count is 0. The stock model takes one mask
for all layers, so a forward pre-hook hands each layer's attention its own. The positions side (every
id exact, every held key the one that arrived, turned to its ids) is tests/position_ledger.py."""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from potwatch.kernels.kv_quant import QuantizedKV, quantize_reference, unpack_codes
from tests.device import EXACT

# Largest |difference| allowed between the session's logits and the stock forward's: the suite's EXACT
# tolerance, 1e-5 on the CPU, looser on CUDA (tests/device.py says why).
ORACLE_ATOL = EXACT.atol
# Every family, one demo each: Qwen2-VL, Qwen2.5-VL and Qwen3-VL (M-RoPE), LLaVA-OneVision and SmolVLM2 (1-D).
ORACLE_FAMILIES = ["demo", "demo-qwen2.5", "demo-qwen3", "demo-llava", "demo-smolvlm"]


# --- the stock forward over what the cache holds --------------------------------------------------
def _decode(codes, scales, mean, bits: int, group: int) -> torch.Tensor:
    """code x scale (+ the key's head mean) in float32, for rows [1, heads, n, ...]."""
    q = QuantizedKV(codes, scales, mean, bits, group)
    values = unpack_codes(q).float()
    batch, heads, n, dim = values.shape
    out = (values.view(batch, heads, n, dim // group, group) * scales.float()[..., None]).view(batch, heads, n, dim)
    return out if mean is None else out + mean.float()[:, None]


def held_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the K/V every layer holds, [1, heads, n, head_dim] at the model's dtype: read straight
    from the storage (codes decoded here for a quantised cache)."""
    n, geometry, storage = cache.length, cache.geometry, cache.storage
    if not geometry.quantized:
        return [(storage["keys"][i : i + 1, :, :n].clone(), storage["values"][i : i + 1, :, :n].clone())
                for i in range(geometry.layers)]
    bits, group, dtype = geometry.kv_bits, geometry.quant_group, geometry.dtype
    held = []
    for i in range(geometry.layers):
        part = lambda name: storage[name][i : i + 1, :, :n]  # noqa: E731
        keys = _decode(part("key_codes"), part("key_scales"), storage["key_mean"][i : i + 1, :n], bits, group)
        values = _decode(part("value_codes"), part("value_scales"), None, bits, group)
        held.append((keys.to(dtype), values.to(dtype)))
    return held


def slot_masks(counts: torch.Tensor, layers: int, query_heads: int, queries: int) -> list[torch.Tensor]:
    """Per layer, the additive mask [1, query heads, queries, held + queries] for slot counts [layers *
    KV heads, held]: log(count) on the held slots (-inf for an empty one), causal over the new tokens."""
    rows, held = counts.shape
    group = query_heads // (rows // layers)
    causal = torch.full((queries, queries), float("-inf"), device=counts.device).triu(1)
    masks = []
    for layer in counts.view(layers, rows // layers, held):
        bias = layer.log().repeat_interleave(group, dim=0)[:, None, :].expand(query_heads, queries, held)
        masks.append(torch.cat([bias, causal.expand(query_heads, queries, queries)], dim=-1).unsqueeze(0))
    return masks


@contextlib.contextmanager
def stock_attention(adapter, masks: list[torch.Tensor] | None):
    """The model's own attention implementation (a slot-count session wraps it: see
    models/count_attention.py), and each layer's mask, if any, handed to its attention."""
    modules = adapter.attention_modules()
    config = modules[0].config
    saved = config._attn_implementation
    config._attn_implementation = saved.removeprefix("potwatch_counts_")
    hooks = []
    if masks is not None:
        for module, mask in zip(modules, masks):
            def hand_mask(_, args, kwargs, mask=mask):
                return args, {**kwargs, "attention_mask": mask.to(kwargs["hidden_states"].dtype)}
            hooks.append(module.register_forward_pre_hook(hand_mask, with_kwargs=True))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        config._attn_implementation = saved


def _round_trip(states: torch.Tensor, geometry, center: bool) -> torch.Tensor:
    """New K or V as a quantised cache stores and decodes them."""
    q = quantize_reference(states.to(geometry.side_dtype), geometry.kv_bits, geometry.quant_group, center)
    return _decode(q.data, q.scale, q.mean, q.bits, q.group).to(states.dtype)


def reference_logits(adapter, held, counts: torch.Tensor | None, geometry, block) -> torch.Tensor:
    """Next-token logits of the stock model over `block` after the `held` K/V, at the block's ids."""
    cache = DynamicCache(ddp_cache_data=held)
    if geometry.quantized:  # the block's own K/V go through the cache's rounding too, as in the session
        update = cache.update
        cache.update = lambda k, v, layer, *a, **kw: update(
            _round_trip(k, geometry, True), _round_trip(v, geometry, False), layer, *a, **kw)
    position_ids = block.meta.pos if geometry.pos_rows == 1 else block.meta.pos.unsqueeze(1)
    masks = None
    if counts is not None:
        config = adapter.model.config.get_text_config()
        masks = slot_masks(counts, geometry.layers, config.num_attention_heads, len(block))
    with torch.no_grad(), stock_attention(adapter, masks):
        out = adapter.model(inputs_embeds=block.embeds, position_ids=position_ids.to(adapter.device), cache=cache,
                            use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


class AnswerOracle:
    """Compares every logits forward of a session (its questions and answer tokens) with the stock one."""

    def __init__(self, session):
        self.session = session
        self.differences: list[float] = []
        self.count_range = (1.0, 1.0)  # the smallest and largest slot count the comparisons saw
        run = session._run

        def checked_run(block, logits, *args, **kwargs):
            if not logits:
                return run(block, logits, *args, **kwargs)
            cache = session.cache
            held = held_kv(cache)
            counts = cache.state_rows("count")
            if counts is not None:
                counts = counts[:, : cache.length].clone()
                low, high = self.count_range
                self.count_range = (min(low, float(counts.min())), max(high, float(counts.max())))
            out = run(block, logits, *args, **kwargs)
            expected = reference_logits(session.adapter, held, counts, session.geometry, block)
            self.differences.append(float((out - expected).abs().max()))
            return out

        session._run = checked_run

    @property
    def worst(self) -> float:
        return max(self.differences)
