"""Chat templates in each family's own format, for the demo models' tokenizers (each family's description
names its own): a saved demo checkpoint carries one (chat_template.jinja) and is prompted through it, as a
real checkpoint is.

- Qwen2-VL / Qwen2.5-VL: ChatML, "You are a helpful assistant." when no system turn is given, a video
  as <|vision_start|><|video_pad|><|vision_end|> (an image with <|image_pad|>) where it stands in the turn.
- Qwen3-VL (Instruct): the same turns, a system turn only when one is given.
- LLaVA-OneVision: the qwen_1_5 ChatML the model was trained in (LLaVA-NeXT's conversation template):
  "You are a helpful assistant." by default, each image or video token on its own line before the text.
  (The llava-hf hub checkpoints ship a different template: "<|im_start|>user " with a space, and no
  newline after <|im_end|>; such a checkpoint is prompted through that template instead.)
- SmolVLM2: the template transformers' SmolVLM processor renders every chat with a video through."""

from __future__ import annotations

from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as SMOLVLM_TEMPLATE

# One content part: Qwen writes media where they stand in the turn, between vision markers.
_QWEN_PART = (
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
)


def _chatml(default_system: str | None, part: str) -> str:
    """ChatML turns whose list contents render part by part with `part`; string contents as they are."""
    default = (
        f"{{% if messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}"
        "{% endif %}"
        if default_system else ""
    )
    return (
        default
        + "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}" + part + "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


QWEN2_VL_TEMPLATE = _chatml("You are a helpful assistant.", _QWEN_PART)
QWEN3_VL_TEMPLATE = _chatml(None, _QWEN_PART)
LLAVA_ONEVISION_TEMPLATE = _chatml(
    "You are a helpful assistant.",
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}",
)
