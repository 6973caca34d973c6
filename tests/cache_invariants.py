"""What must hold of a session's capped cache after every block and every answer, in one place, so the
cap, soak and concurrency tests check the same things."""

from __future__ import annotations

import torch

from potwatch.compression.token_meta import TokenKind


def cache_problems(session) -> list[str]:
    """Every broken invariant of `session`'s cache, as sentences (empty when all hold). Takes the
    session's lock, so a feeding or answering thread cannot change the cache halfway through."""
    problems: list[str] = []
    with session._lock:
        cache = session.cache
        cap = session.cap_bytes
        length = cache.length
        if cap is not None:
            if cache.nbytes > cap:
                problems.append(f"allocated {cache.nbytes} B over the cap of {cap} B")
            if cache.used_bytes > cap:
                problems.append(f"in use {cache.used_bytes} B over the cap of {cap} B")
            if not 0 <= length <= cache.capacity:
                problems.append(f"length {length} outside 0..{cache.capacity}")
        if session.peak_bytes > (cap if cap is not None else float("inf")):
            problems.append(f"peak {session.peak_bytes} B over the cap")
        reference_text = None
        reference_counts = None
        for index, layer in enumerate(cache.layers):
            where = f"layer {index}"
            if layer.length != length or layer.capacity != cache.capacity:
                problems.append(f"{where} holds {layer.length}/{layer.capacity}, not {length}/{cache.capacity}")
                continue
            if layer.keys.shape[-2] != length or layer.values.shape[-2] != length:
                problems.append(f"{where}: K/V views do not cover exactly the {length} held tokens")
            meta = {name: tensor[:, :length] for name, tensor in layer.meta.items()}
            pos = layer.pos[:, :, :length]
            kinds = meta["kind"]
            known = torch.tensor([k.value for k in TokenKind], dtype=kinds.dtype, device=kinds.device)
            if not bool(torch.isin(kinds, known).all()):
                problems.append(f"{where}: a held token has no valid kind")
            # [heads, kinds]: system, dialogue, and visual tokens + holes (per-head budgets pad with holes)
            evictable = (kinds == TokenKind.VISION) | (kinds == TokenKind.HOLE)
            counts = torch.stack([(kinds == TokenKind.SYSTEM).sum(1), (kinds == TokenKind.DIALOGUE).sum(1),
                                  evictable.sum(1)], dim=1)
            if not bool((counts == counts[0]).all()):
                problems.append(f"{where}: heads hold different numbers of system/vision/dialogue tokens")
            if "count" in layer.state:
                slot_counts = layer.state["count"][:, :length]
                if not bool((slot_counts[kinds == TokenKind.HOLE] == 0).all()):
                    problems.append(f"{where}: a hole counts tokens")
                if not bool((slot_counts[kinds != TokenKind.HOLE] >= 1).all()):
                    problems.append(f"{where}: a held token counts less than one token")
            elif bool((kinds == TokenKind.HOLE).any()):
                problems.append(f"{where}: holes in a cache without slot counts (attention would see them)")
            reference_counts = counts[0] if reference_counts is None else reference_counts
            if not torch.equal(counts[0], reference_counts):
                problems.append(f"{where}: token kinds differ from layer 0")
            for head in range(kinds.shape[0]):
                text = (kinds[head] == TokenKind.SYSTEM) | (kinds[head] == TokenKind.DIALOGUE)
                # protected text: the same tokens, in the same order, in every head and layer
                signature = (kinds[head][text], meta["turn"][head][text], pos[:, head][:, text])
                if reference_text is None:
                    reference_text = signature
                elif not all(torch.equal(a, b) for a, b in zip(signature, reference_text)):
                    problems.append(f"{where} head {head}: protected text differs from layer 0 head 0")
                vision = kinds[head] == TokenKind.VISION
                frames = meta["frame"][head][vision].long()
                if bool((frames < 0).any()):
                    problems.append(f"{where} head {head}: a visual token without a frame")
                if frames.numel() > 1 and not bool((frames[1:] >= frames[:-1]).all()):
                    problems.append(f"{where} head {head}: visual tokens out of time order")
                patch = torch.stack([frames, meta["row"][head][vision].long(), meta["col"][head][vision].long()])
                if torch.unique(patch, dim=1).shape[1] != patch.shape[1]:
                    problems.append(f"{where} head {head}: a visual token is held twice")
            keys, values = layer.dequantized()
            if not (bool(torch.isfinite(keys).all()) and bool(torch.isfinite(values).all())):
                problems.append(f"{where}: non-finite keys or values")
            if cache.quantized and not all(bool((meta[name] == meta[name][:1]).all()) for name in ("frame", "row", "col")):
                problems.append(f"{where}: the heads of a quantised layer hold different tokens")
        if cache.capped and session.monitor.events:
            # the dialogue may use free room past its share between compactions; each pass restores the share
            last = session.monitor.events[-1]
            if last.dialogue_tokens > session.monitor.dialogue_capacity:
                problems.append(f"a compaction left {last.dialogue_tokens} dialogue tokens, over the share "
                                f"{session.monitor.dialogue_capacity}")
    return problems


def assert_cache_invariants(session) -> None:
    problems = cache_problems(session)
    assert not problems, "; ".join(problems)
