"""An offline byte-level tokenizer with a family's chat and vision special tokens, for the demo models.

Every byte is one token, so any text round-trips; no merges, no downloads. Special tokens come after
the 256 byte tokens: the end-of-turn token first, then the padding token, then the rest in order. Each
family's demo tokenizer carries that family's chat template."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Each tuple starts with the padding token; `eos` names the end-of-turn token among them.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
SMOLVLM_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
)


def build_demo_tokenizer(
    special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS, eos: str = "<|im_end|>", chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """The byte tokenizer with `special_tokens`; `chat_template` (the family's, see chat_templates.py) is
    saved with it, so a saved demo is prompted through its template as a real checkpoint is."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    pad = special_tokens[0]
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=list(special_tokens[1:]),
    )
    wrapped.chat_template = chat_template
    return wrapped
