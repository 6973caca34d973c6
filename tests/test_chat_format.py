"""The checkpoint's own prompt format: a model with a chat template is prompted through it.

For every family's template potwatch can build offline (the demo tokenizers carry their family's, the
trained `tiny` ships one), the pieces cut from the template give the same ids as the built-in format
over a three-turn dialogue. A saved checkpoint whose template differs from the built-in format gets
the template's prompt: its answers equal one forward pass of the stock model over the template's own
rendering of the dialogue. Templates a stream cannot follow fall back, and say why."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.errors import ModelLoadError
from potwatch.models.chat_format import BUILT_IN, TEMPLATE, ChatTemplateError, template_format
from potwatch.models.chat_templates import QWEN2_VL_TEMPLATE, SMOLVLM_TEMPLATE
from potwatch.models.registry import load_model, save_demo, tiny_folder
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames

FAMILY_MODELS = ["demo", "demo-qwen2.5", "demo-qwen3", "demo-llava", "demo-smolvlm", "tiny"]
QUESTIONS = ("What moved?", "And then, what came in?", "Which colour?")


@pytest.fixture(scope="module", params=FAMILY_MODELS)
def family_model(request):
    return load_model(request.param, dtype="float32", device="cpu")


VIDEO = -5  # stands for a video's frames in the id lists below


def streamed_ids(prompt, answer: list[int], stop: int) -> list[int]:
    """What a stream of three turns holds: a first answer the model ended itself with `stop`, a second
    cut by max_new_tokens, then the third question."""
    ids = prompt.system_ids()
    for turn, question in enumerate(QUESTIONS):
        ids += [VIDEO] + prompt.question_ids(question)
        if turn == 0:
            ids += answer + [stop] + prompt.resume_ids(answer_finished=True)
        elif turn == 1:
            ids += answer + prompt.resume_ids(answer_finished=False)
    return ids


def template_ids(adapter, answer: list[int]) -> list[int]:
    """The same dialogue as the template renders it, each turn as it was prompted, each video as the
    family's processor lays it out: the reference, made without cutting the template into pieces."""
    layout = adapter.prompt.layout
    system = [] if adapter.system_prompt is None else [{"role": "system", "content": [
        {"type": "text", "text": adapter.system_prompt}]}]
    messages, text = system, ""
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        rendered = adapter.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text += rendered.split(f"ANSWER-{turn - 1}")[-1] if turn else rendered
        if turn < 2:
            text += f"ANSWER-{turn}"
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"ANSWER-{turn}"}]})
    text = text.replace(layout.placeholder, f"{layout.intro}VIDEO{layout.outro}")
    ids = []
    for part in re.split("(VIDEO|ANSWER-\\d)", text):
        if part == "VIDEO":
            ids += [VIDEO, *layout.outro_ids]
        else:
            ids += answer if part.startswith("ANSWER-") else adapter.tokenizer.encode(part, add_special_tokens=False)
    return ids


def test_the_template_and_the_built_in_format_give_the_same_ids(family_model):
    """Three turns; the template's pieces and the built-in format both equal the template's rendering."""
    adapter = family_model
    assert adapter.prompt.source == TEMPLATE and adapter.built_in_prompt().source == BUILT_IN
    answer = adapter.tokenizer.encode("A red box.", add_special_tokens=False)
    stop = adapter.tokenizer.convert_tokens_to_ids(adapter.prompt.end_of_answer)
    assert stop in adapter.stop_ids()
    reference = template_ids(adapter, answer)
    assert streamed_ids(adapter.prompt, answer, stop) == reference
    assert streamed_ids(adapter.built_in_prompt(), answer, stop) == reference


def test_they_agree_with_another_system_prompt(family_model):
    adapter = family_model
    made = type(adapter)(adapter.model, adapter.tokenizer, adapter.processor, adapter.name, adapter.is_demo,
                         system_prompt="Watch the door and say when it opens.")
    assert made.prompt.source == TEMPLATE
    stop = made.tokenizer.convert_tokens_to_ids(made.prompt.end_of_answer)
    reference = template_ids(made, [65, 66])
    assert streamed_ids(made.prompt, [65, 66], stop) == streamed_ids(made.built_in_prompt(), [65, 66], stop) == reference


def test_without_a_system_prompt_the_template_writes_its_default():
    adapter = load_model("demo", dtype="float32", device="cpu")
    made = type(adapter)(adapter.model, adapter.tokenizer, adapter.processor, adapter.name, True, system_prompt=None)
    assert made.decode(made.prompt.system_ids()).startswith("system\nYou are a helpful assistant.")
    assert "system" not in made.decode(made.built_in_prompt().system_ids())


# --- a saved checkpoint is prompted through its own template ---------------------------------------
# Not the built-in format: a system line of its own, and the user speaks as "viewer".
VIEWER_TEMPLATE = (
    "{{ '<|im_start|>system\\nTemplate-made stream. ' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'][0]['text'] }}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + ('viewer' if message['role'] == 'user' else message['role']) + '\\n' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The format of the llava-hf hub checkpoints' template: a space after the role, no newline after <|im_end|>.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for part in message['content'] if part['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endfor %}"
    "{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def saved_with_template(name: str, folder, template: str):
    save_demo(name, folder)
    (folder / "chat_template.jinja").write_text(template)
    return load_model(str(folder), dtype="float32", device="cpu")


def rendered_oracle_logits(adapter, template: str, turns: list[tuple[list, str, list[int] | None]],
                           answer_so_far: list[int]) -> torch.Tensor:
    """Next-token logits of the stock model over the template's own rendering of the dialogue and the
    last answer so far, in one forward pass: each video placeholder expanded to its frames' tokens, each
    earlier answer's marker to its ids. Each turn is the template's rendering at the time it was asked
    (the llava-hf format renders an earlier answer's header unlike the prompt that produced it)."""
    messages = [{"role": "system", "content": [{"type": "text", "text": adapter.system_prompt}]}]
    text = ""
    for index, (_, question, answer) in enumerate(turns):
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        rendered = adapter.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                         add_generation_prompt=True)
        # a stream keeps what it said: earlier turns as they were prompted, the template's text after an answer
        text += rendered.split(f"ANSWER-{index - 1}")[-1] if index else rendered
        if answer is not None:
            text += f"ANSWER-{index}"
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"ANSWER-{index}"}]})
    placeholder = adapter.prompt.layout.placeholder
    video_id = adapter.model.config.video_token_id
    videos, kwargs = [], {}
    if adapter.family == "llava_onevision":
        videos = [[video_id] * (len(frames) * adapter.grid_side**2 + 1) for frames, _, _ in turns]
        kwargs["pixel_values_videos"] = torch.from_numpy(np.stack([adapter.processor(f) for f, _, _ in turns]))
    else:
        pixels, grids = [], []
        for frames, _, _ in turns:
            values, (groups, grid_h, grid_w) = adapter.processor(frames)
            pixels.append(values)
            grids.append([groups, grid_h, grid_w])
            videos.append([video_id] * (groups * grid_h * grid_w // adapter.processor.merge_size**2))
        kwargs.update(pixel_values_videos=torch.from_numpy(np.concatenate(pixels)), video_grid_thw=torch.tensor(grids))
    ids, video = [], iter(videos)
    for part in re.split(f"({re.escape(placeholder)}|ANSWER-\\d)", text):
        if part == placeholder:
            ids += next(video)
        elif part.startswith("ANSWER-"):
            ids += turns[int(part[-1])][2]
        else:
            ids += adapter.tokenizer.encode(part, add_special_tokens=False)
    tensor = torch.tensor([ids + answer_so_far])
    if adapter.family != "llava_onevision":
        kwargs["mm_token_type_ids"] = (tensor == video_id).long() * 2
    with torch.no_grad():
        return adapter.model(input_ids=tensor, **kwargs).logits[0, -1].float()


@pytest.mark.parametrize("name, template, made_by_template", [
    ("demo", VIEWER_TEMPLATE, "<|im_start|>system\nTemplate-made stream. "),
    ("demo-llava", LLAVA_HF_TEMPLATE, "<|im_start|>user "),
])
def test_a_saved_checkpoint_streams_its_own_templates_prompt(name, template, made_by_template, tmp_path):
    """Two turns (the first answer cut at 3 tokens) against one forward over the template's rendering."""
    adapter = saved_with_template(name, tmp_path / name, template)
    assert adapter.prompt.source == TEMPLATE
    streamed_text = adapter.tokenizer.decode(adapter.prompt.system_ids())
    assert made_by_template in streamed_text
    assert made_by_template not in adapter.tokenizer.decode(adapter.built_in_prompt().system_ids())
    step = adapter.frames_per_group
    first, second = random_frames(2 * step, seed=4), random_frames(2 * step, seed=14)
    session = StreamSession(adapter, mem_cap="16MB", fps=2.0, max_new_tokens=3)
    session.feed(first)
    answer = session.ask(QUESTIONS[0])
    expected: list[int] = []
    while len(expected) < 3:  # the oracle's greedy answer, one full forward a token
        logits = rendered_oracle_logits(adapter, template, [(first, QUESTIONS[0], None)], expected)
        expected.append(int(torch.argmax(logits)))
    assert not set(expected) & adapter.stop_ids(), "pick frames whose first answer is cut by max_new_tokens"
    assert answer.tokens == 3 and answer.text == adapter.decode(expected).strip()
    session.feed(second)
    block = adapter.text_block(adapter.question_ids(QUESTIONS[1]), TokenKind.DIALOGUE, session.positions, 1)
    streamed = session._run(block, logits=True)
    turns = [(first, QUESTIONS[0], expected), (second, QUESTIONS[1], None)]
    oracle = rendered_oracle_logits(adapter, template, turns, [])
    assert torch.allclose(streamed, oracle, atol=1e-5), (streamed - oracle).abs().max()


# --- templates a stream cannot follow, and checkpoints without one --------------------------------
def test_a_checkpoint_without_a_template_gets_the_built_in_format(tmp_path):
    folder = save_demo("demo-qwen3", tmp_path / "plain")
    (folder / "chat_template.jinja").unlink()
    adapter = load_model(str(folder), dtype="float32", device="cpu")
    assert adapter.prompt.source == BUILT_IN
    assert adapter.question_ids("Why?") == adapter.built_in_prompt().question_ids("Why?")


def test_a_processor_chat_template_comes_before_the_tokenizers(tmp_path):
    """chat_template.json is the processor's (as real Qwen2-VL checkpoints ship it): it wins."""
    folder = save_demo("demo", tmp_path / "processor-template")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": VIEWER_TEMPLATE}))
    adapter = load_model(str(folder), dtype="float32", device="cpu")
    assert "Template-made stream." in adapter.tokenizer.decode(adapter.prompt.system_ids())


def test_a_template_that_drops_the_video_falls_back_and_says_why(tmp_path, caplog):
    no_video = QWEN2_VL_TEMPLATE.replace("<|vision_start|><|video_pad|><|vision_end|>", "")
    with caplog.at_level(logging.WARNING, logger="potwatch.models.chat_format"):
        adapter = saved_with_template("demo", tmp_path / "no-video", no_video)
    assert adapter.prompt.source == BUILT_IN
    assert "does not write a video as '<|video_pad|>'" in caplog.text


def test_smolvlm_without_a_video_template_takes_its_processors(tmp_path):
    """SmolVLM2's hub templates have no video part; its processor renders video chats with its own."""
    hub_like = SMOLVLM_TEMPLATE.replace("{% elif line['type'] == 'video' %}{{ '<video>' }}", "")
    assert hub_like != SMOLVLM_TEMPLATE
    adapter = saved_with_template("demo-smolvlm", tmp_path / "smolvlm", hub_like)
    assert adapter.prompt.format == replace(adapter.built_in_format(), source=TEMPLATE)


def test_a_template_that_changes_from_turn_to_turn_cannot_be_streamed():
    """Numbered turns (like Qwen's add_vision_id "Video 2: ") would need earlier turns re-rendered."""
    numbered = QWEN2_VL_TEMPLATE.replace("message['role'] + '\\n'", "message['role'] + ' ' + loop.index|string + '\\n'")
    assert numbered != QWEN2_VL_TEMPLATE
    adapter = load_model("demo", dtype="float32", device="cpu")
    with pytest.raises(ChatTemplateError, match="differently from turn to turn"):
        template_format(adapter.tokenizer, numbered, "<|video_pad|>", "Watch.")


# --- resize rules and token layout from the processor config --------------------------------------
@pytest.mark.parametrize("file, settings", [
    ("video_preprocessor_config.json", {"size": {"shortest_edge": 3136, "longest_edge": 6272}}),
    ("processor_config.json", {"video_processor": {"min_pixels": 3136, "max_pixels": 6272}}),
])
def test_the_video_processors_resize_rules_come_first(file, settings, tmp_path):
    """tiny's image processor allows 9,408 pixels a frame (12 tokens a group at 4:3); a video processor
    config of 6,272 (transformers 5's size keys, or its nested processor_config.json) gives 6 tokens."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_folder(), folder)
    assert load_model(str(folder), device="cpu").tokens_per_group(240, 320) == 12
    (folder / file).write_text(json.dumps(settings))
    adapter = load_model(str(folder), device="cpu")
    assert (adapter.processor.min_pixels, adapter.processor.max_pixels) == (3136, 6272)
    assert adapter.tokens_per_group(240, 320) == 6


@pytest.mark.parametrize("name, file, settings, key", [
    ("demo", "preprocessor_config.json", {"patch_size": 16}, "patch_size"),
    ("demo-smolvlm", "processor_config.json", {"image_seq_len": 64}, "image_seq_len"),
    ("demo-llava", "video_preprocessor_config.json", {"size": {"height": 384, "width": 384}}, "size height"),
])
def test_a_processor_config_that_contradicts_the_vision_tower_is_refused(name, file, settings, key, tmp_path):
    folder = save_demo(name, tmp_path / name)
    path = folder / file
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.exists() else {}), **settings}))
    with pytest.raises(ModelLoadError, match=f"gives {key} .* built for"):
        load_model(str(folder), device="cpu")


def test_a_broken_processor_config_is_one_sentence(tmp_path):
    folder = save_demo("demo", tmp_path / "broken")
    (folder / "preprocessor_config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="preprocessor_config.json of .* is not a JSON object"):
        load_model(str(folder), device="cpu")
