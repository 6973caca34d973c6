"""The oracle that keeps every optimisation honest: with a cap larger than the stream, the streamed,
chunked session gives the same logits and the same greedy answer as one forward pass of the stock
transformers model over the same frames and question."""

from __future__ import annotations

import pytest
import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import EXACT, assert_close


def one_forward_logits(adapter, frames, question: str, answer_ids: list[int]) -> torch.Tensor:
    """Logits of the stock model over [system, video, question, answer so far] in one forward pass,
    with the model computing its own M-RoPE positions."""
    processor = adapter.processor
    pixels, (groups, grid_h, grid_w) = processor(frames)
    system = adapter.tokenizer.encode(
        f"<|im_start|>system\n{adapter.system_prompt}<|im_end|>\n<|im_start|>user\n<|vision_start|>", add_special_tokens=False
    )
    video_id = adapter.model.config.video_token_id
    visual = groups * grid_h * grid_w // processor.merge_size**2
    ids = torch.tensor([system + [video_id] * visual + adapter.question_ids(question) + answer_ids])
    kwargs = dict(
        input_ids=ids,
        pixel_values_videos=torch.from_numpy(pixels),
        video_grid_thw=torch.tensor([[groups, grid_h, grid_w]]),
        mm_token_type_ids=(ids == video_id).long() * 2,
    )
    if adapter.family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([processor.temporal_patch_size / 2.0])  # fps 2
    with torch.no_grad():
        return adapter.model(**{key: value.to(adapter.device) for key, value in kwargs.items()}).logits[0, -1].float()


@pytest.mark.parametrize("adapter_name", ["demo_adapter", "demo25_adapter"])
def test_streamed_prefill_equals_one_forward(adapter_name, request):
    adapter = request.getfixturevalue(adapter_name)
    frames = random_frames(8, seed=3)  # 4 temporal groups, fed one group per block
    session = StreamSession(adapter, mem_cap="1GB", policy="tar_van", fps=2.0)
    session.feed(frames)
    assert session.stats()["compressions"] == 0
    block = adapter.text_block(adapter.question_ids("What moved?"), TokenKind.DIALOGUE, session.positions, 0)
    streamed = session._run(block, logits=True)
    oracle = one_forward_logits(adapter, frames, "What moved?", [])
    assert_close(streamed, oracle, EXACT)


@pytest.mark.parametrize("adapter_name", ["demo_adapter", "demo25_adapter"])
def test_greedy_answer_equals_one_forward_greedy(adapter_name, request):
    adapter = request.getfixturevalue(adapter_name)
    frames = random_frames(6, seed=4)
    session = StreamSession(adapter, mem_cap="1GB", fps=2.0, max_new_tokens=6)
    session.feed(frames)
    answer = session.ask("What moved?")
    expected: list[int] = []
    stops = adapter.stop_ids()
    for _ in range(6):
        token = int(torch.argmax(one_forward_logits(adapter, frames, "What moved?", expected)))
        if token in stops:
            break
        expected.append(token)
    assert answer.tokens == len(expected)
    assert answer.text == adapter.decode(expected).strip()
    assert answer.meaningless  # demo weights are random
