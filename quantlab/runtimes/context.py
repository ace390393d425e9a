"""How long a context a runtime is opened with."""

from __future__ import annotations

# The longest context a runtime is opened with. The lab's prompts and chains are short, and a released model's
# own context (131,072 positions for gpt-oss) would make llama.cpp keep logits for every position of it
# (positions x vocabulary floats: 105 GB for gpt-oss) and vLLM reserve a cache that size.
MAX_EVALUATION_CONTEXT = 4096


def evaluation_context(max_position_embeddings: int) -> int:
    """The context a runtime is opened with: the model's own, at most ``MAX_EVALUATION_CONTEXT``."""
    return min(max_position_embeddings, MAX_EVALUATION_CONTEXT)
