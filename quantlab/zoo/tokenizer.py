"""The reference model's tokenizer: a small BPE trained locally with the ``tokenizers`` library.

Digits are always single tokens (arithmetic on a digit-per-token model is learnable; on merged multi-digit
tokens it is not), while the fixed scaffolding of the prompts (``effort:high Q:``, `` #### ``) merges into a few
tokens. Saved as a ``PreTrainedTokenizerFast`` so ``AutoTokenizer.from_pretrained`` loads it offline.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
VOCAB_SIZE = 64


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``texts`` with single-digit tokens, wrapped for transformers."""
    core = Tokenizer(models.BPE(unk_token=None))
    # Split before every space first: no token may span the prompt/answer boundary ("A:" then " ####"), or the
    # prompt alone would tokenize differently from the prompt inside a training text.
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="merged_with_next"), pre_tokenizers.Digits(individual_digits=True)]
    )
    core.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left", clean_up_tokenization_spaces=False
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
