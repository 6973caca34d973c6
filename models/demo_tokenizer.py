"""An offline byte-level tokenizer with a family's chat and vision special tokens, for the demo models.

Every byte is one token, so any text round-trips; no merges, no downloads. Special tokens come after
the 256 byte tokens: the padding token first, then the rest in order. The family's description
(models/family.py) gives the tokens, the end-of-turn token among them and the chat template."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def build_demo_tokenizer(special_tokens: tuple[str, ...], eos: str, chat_template: str | None = None
                         ) -> PreTrainedTokenizerFast:
    """The byte tokenizer with `special_tokens` (padding token first); `chat_template` is saved with it,
    so a saved demo is prompted through its template as a real checkpoint is."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos,
        pad_token=special_tokens[0],
        additional_special_tokens=list(special_tokens[1:]),
    )
    wrapped.chat_template = chat_template
    return wrapped
