"""What the `tiny` checkpoint is made of before training: a BPE tokenizer trained with `tokenizers` on
the synthetic world's text plus Qwen's special tokens, a Qwen2-VL chat template, a small stock
`Qwen2VLConfig`, and the preprocessor settings. `training/train_tiny.py` builds these, trains the
weights and saves the folder that `--model tiny` loads through `from_pretrained`.

Sizes: the language model is 4 layers x 128 wide with 2 KV heads of 32 (K+V 2 KiB a token in float32);
frames are resized to at most 112 x 84 pixels, 12 tokens per two-frame temporal group at 4:3. The
temporal M-RoPE section takes 6 of the 16 frequencies, down to a period of about 230 groups, so the
model can tell the time of an event over a stream of a few minutes."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig

from potwatch.models.families.qwen2_vl import QWEN_SPECIAL_TOKENS

TINY_VOCAB = 768
TINY_MAX_PIXELS = 112 * 84
TINY_MIN_PIXELS = 56 * 56
TINY_MARK = "potwatch_tiny"  # config attribute: what the model knows, shown beside its answers
# config attribute: the model says ages as the position distance it reads; see streaming/position_clock.py
AGES_MARK = "potwatch_ages_from_positions"
TINY_LABEL = (
    "tiny: a 1.3M-parameter Qwen2-VL trained only on potwatch's synthetic world (coloured boxes, discs and "
    "triangles that come and go; colours, shapes, order, counts, times); it knows nothing of real scenes"
)


def tiny_label(parameters: int) -> str:
    """What a tiny model of this many parameters knows, as `watch`, the web UI and `potwatch models` show it."""
    return TINY_LABEL.replace("1.3M", f"{parameters / 1e6:.1f}M")


def shipped_tiny_label() -> str:
    """The label in the shipped checkpoint's config, read without loading the model."""
    import json

    from potwatch.assets import tiny_folder

    config = json.loads((tiny_folder() / "config.json").read_text())
    return config.get(TINY_MARK, TINY_LABEL)

# Qwen2-VL's chat layout: the system turn, then user turns whose video sits between vision markers,
# then the assistant. It renders exactly the prompt the streaming adapter builds token by token.
CHAT_TEMPLATE = (
    "{% set default_system = 'You are a helpful assistant watching a live video stream. Answer questions about "
    "what you have seen so far.' %}"
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts`: any text still round-trips (bytes are in the alphabet); digits stay
    single tokens so times are spelt digit by digit; Qwen's special tokens are never split."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_config(tokenizer, hidden: int = 128, layers: int = 4, vision_depth: int = 2,
                vision_width: int = 96, mrope_section: tuple[int, int, int] = (6, 5, 5)) -> Qwen2VLConfig:
    """A stock Qwen2-VL config at the tiny model's size (the defaults), with 32-wide attention heads."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0, "mrope_section": list(mrope_section)},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=vision_depth, embed_dim=vision_width, hidden_size=hidden, num_heads=vision_width // 32, mlp_ratio=2)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    setattr(config, TINY_MARK, TINY_LABEL)
    setattr(config, AGES_MARK, True)
    return config


def preprocessor_config() -> dict:
    """Qwen2-VL image processor settings at the tiny model's frame size."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": TINY_MIN_PIXELS,
        "max_pixels": TINY_MAX_PIXELS,
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True,
        "do_normalize": True,
        "do_resize": True,
    }
