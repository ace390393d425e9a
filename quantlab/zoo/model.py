"""The reference model's architecture: a tiny ``GptOssForCausalLM``.

Every dimension that a GGUF k-quant reads as a row (hidden size, expert intermediate size, attention width) is a
multiple of 256, so that llama.cpp's 256-value super-blocks fit every matrix and k-quant recipes run on the
reference model without fallbacks. Four layers, eight experts, top-2: about 7M parameters, trainable on two CPU
cores within an hour.
"""

from __future__ import annotations

from transformers import GptOssConfig

MODEL_NAME = "tiny-gpt-oss"


def tiny_gpt_oss_config(vocab_size: int, pad_token_id: int, eos_token_id: int) -> GptOssConfig:
    """The config of ``tiny-gpt-oss`` for a tokenizer of ``vocab_size`` tokens."""
    # transformers takes the implementation choices as **kwargs of every config; its signature lists only the
    # model's own fields
    return GptOssConfig(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_local_experts=8,
        num_experts_per_tok=2,
        # gpt-oss alternates sliding-window and full attention; a 64-token window holds about one conversation
        # (45-65 tokens), the full layers see the whole packed row.
        sliding_window=64,
        max_position_embeddings=256,
        # The yarn defaults assume a 4k-token original context; plain RoPE suits 256 positions.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        router_aux_loss_coef=0.01,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        # No SDPA path for attention sinks on CPU; the batched expert kernels are slower than the loop here.
        attn_implementation="eager",
        experts_implementation="eager",
    )
