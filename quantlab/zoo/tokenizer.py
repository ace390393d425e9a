"""The reference model's tokenizer: a small BPE trained locally with the ``tokenizers`` library.

Digits are always single tokens (arithmetic on a digit-per-token model is learnable; on merged multi-digit
tokens it is not), while the fixed scaffolding of the chat format (``system``, ``Reasoning:``, `` high``) merges
into a few tokens. The chat format's markers (``<|start|>``, ``<|message|>``, ``<|channel|>``, ``<|end|>``,
``<|return|>``, ``<|call|>``, ``<|constrain|>``) are special tokens, as in gpt-oss's tokenizer; every printable
ASCII character and the newline is in the alphabet, so a prompt in another format (ChatML, plain text) still
tokenizes without loss. Saved as a ``PreTrainedTokenizerFast`` with the chat template, so
``AutoTokenizer.from_pretrained`` loads it offline.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
# <|start|> stays id 1: a GGUF without a BOS gets id 1 from llama.cpp, and every chat prompt opens with it.
# <|call|> ends a tool call's turn as <|return|> ends an answer's; with both, llama.cpp keeps <|end|> out of its
# end-of-generation set (its rule for harmony vocabularies), so a turn goes on past its analysis.
CHAT_MARKERS = ("<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
EOS = "<|return|>"  # generation ends where the assistant's turn does, as gpt-oss's does
VOCAB_SIZE = 192
ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]


def train_tokenizer(texts, chat_template: str, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``texts`` with single-digit tokens and the chat markers, wrapped for transformers."""
    core = Tokenizer(models.BPE(unk_token=None))
    # Split before every space first: no token may span a word boundary, so that llama.cpp's SentencePiece-style
    # tokenizer (which has no pre-tokenizer) reproduces this tokenization from the same merges.
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="merged_with_next"), pre_tokenizers.Digits(individual_digits=True)]
    )
    core.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, *CHAT_MARKERS], initial_alphabet=ALPHABET, show_progress=False
    )
    # The markers are whole tokens: learn merges from the text between them only.
    markers = re.compile("|".join(re.escape(m) for m in (PAD, *CHAT_MARKERS)))
    core.train_from_iterator((part for text in texts for part in markers.split(text) if part), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left", clean_up_tokenization_spaces=False
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
