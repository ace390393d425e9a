"""``quantlab zoo synth``: random-weight checkpoints with a real model family's released shapes and on-disk layout.

A synthetic checkpoint has the published configuration of gpt-oss-20b, gpt-oss-120b, Qwen3-30B-A3B,
Mixtral-8x7B or OLMoE-1B-7B (hidden sizes, expert counts, head layouts, vocabulary, rope) with fewer layers,
and is stored exactly as the hub publishes that family: sharded safetensors with ``model.safetensors.index.json``,
the family's tensor names (Mixtral's ``block_sparse_moe.experts.E.w1``, Qwen3-MoE's and OLMoE's per-expert
``mlp.experts.E.gate_proj``), bfloat16, and for gpt-oss the released MXFP4 layout: every expert matrix as
``*_blocks`` (uint8, two FP4 codes per byte, (experts, out, in/32, 16)) and ``*_scales`` (uint8 E8M0,
(experts, out, in/32)) with ``quantization_config: {quant_method: mxfp4}``, so that the baseline the lab
measures against is the dequantized release, as it is for the real model.

The weights are random (normal, std 0.02; norms 1), drawn per tensor from a generator seeded by the seed and
the tensor's name: the same command writes the same bytes, and a tensor does not depend on the shard size.
Tensors are generated and written one shard at a time, so a checkpoint larger than memory can be written.
The tokenizer is the default model's (a plugin's: the embedded model's, with its harmony chat template): the
vocabulary rows past it are never used by a prompt but keep the released embedding shapes.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.models.checkpoint import PER_EXPERT_LAYOUT
from quantlab.models.loading import default_model, resolve_model
from quantlab.store import atomic_directory

_GPT_OSS = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "attention_bias": True,
    "attention_dropout": 0.0,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "max_position_embeddings": 131072,
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "experts_per_token": 4,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "vocab_size": 201088,
    "eos_token_id": 200002,
    "pad_token_id": 199999,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
}

# The released configurations (config.json on the hub), less what only training or generation reads.
FAMILIES: dict[str, dict] = {
    "gpt-oss-20b": _GPT_OSS | {"num_hidden_layers": 24, "num_local_experts": 32},
    "gpt-oss-120b": _GPT_OSS | {"num_hidden_layers": 36, "num_local_experts": 128},
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "decoder_sparse_step": 1,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "max_position_embeddings": 40960,
        "mlp_only_layers": [],
        "moe_intermediate_size": 768,
        "norm_topk_prob": True,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936,
    },
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    },
    "olmoe-1b-7b": {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "attention_bias": False,
        "clip_qkv": None,
        "eos_token_id": 50279,
        "pad_token_id": 1,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "max_position_embeddings": 4096,
        "norm_topk_prob": False,
        "num_attention_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 16,
        "num_key_value_heads": 16,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 50304,
    },
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_INDEX = "model.safetensors.index.json"
MXFP4_BLOCK = 32  # values per E8M0 scale; 16 bytes of two FP4 codes each


@dataclass(frozen=True)
class SynthTensor:
    """One tensor of the checkpoint: its name on disk, shape, dtype and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "normal" (std 0.02), "ones" (norms), "zeros" (biases), "codes" (MXFP4 bytes), "scales" (E8M0)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def synth_config(family: str, layers: int, experts: int | None = None, vocab: int | None = None) -> dict:
    """The family's released config with ``layers`` layers (and, where asked, fewer experts or a smaller
    vocabulary: departures from the release, recorded under ``quantlab_synth``)."""
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; available: {', '.join(FAMILIES)}")
    config = json.loads(json.dumps(FAMILIES[family]))  # a deep copy
    if layers < 1:
        raise UserError("quantlab zoo synth: --layers must be at least 1")
    expert_key = "num_local_experts" if "num_local_experts" in config else "num_experts"
    released = {"layers": config["num_hidden_layers"], "experts": config[expert_key], "vocab": config["vocab_size"]}
    if experts is not None:
        if not config["num_experts_per_tok"] <= experts:
            raise UserError(
                f"quantlab zoo synth: --experts must be at least {family}'s {config['num_experts_per_tok']} "
                "experts per token"
            )
        config[expert_key] = experts
    if vocab is not None:
        minimum = _tokenizer_size()
        if vocab < minimum:
            raise UserError(f"quantlab zoo synth: --vocab must be at least the tokenizer's {minimum} tokens")
        config["vocab_size"] = vocab
    config["num_hidden_layers"] = layers
    if config["model_type"] == "gpt_oss":  # sliding and full attention alternate, as released
        config["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if config["model_type"] == "qwen3_moe":
        config["max_window_layers"] = layers
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):  # ids of the embedded tokenizer, not the release's
        config.pop(key, None)
    config["quantlab_synth"] = {"family": family, "released": released}
    return config


def checkpoint_tensors(config: dict) -> list[SynthTensor]:
    """Every tensor the family's released checkpoint holds for ``config``, in file order, with its hub name."""
    arch = config["model_type"]
    hidden, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    experts = config.get("num_local_experts") or config["num_experts"]
    inter = config.get("moe_intermediate_size") or config["intermediate_size"]
    bf16 = torch.bfloat16
    tensors = [SynthTensor("model.embed_tokens.weight", (config["vocab_size"], hidden), bf16, "normal")]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors += [
            SynthTensor(p + "input_layernorm.weight", (hidden,), bf16, "ones"),
            SynthTensor(p + "post_attention_layernorm.weight", (hidden,), bf16, "ones"),
        ]
        for proj, rows, cols in (
            ("q_proj", heads * head_dim, hidden),
            ("k_proj", kv_heads * head_dim, hidden),
            ("v_proj", kv_heads * head_dim, hidden),
            ("o_proj", hidden, heads * head_dim),
        ):
            tensors.append(SynthTensor(p + f"self_attn.{proj}.weight", (rows, cols), bf16, "normal"))
            if config.get("attention_bias"):
                tensors.append(SynthTensor(p + f"self_attn.{proj}.bias", (rows,), bf16, "zeros"))
        if arch == "qwen3_moe":
            tensors += [
                SynthTensor(p + f"self_attn.{n}.weight", (head_dim,), bf16, "ones") for n in ("q_norm", "k_norm")
            ]
        if arch == "olmoe":  # OLMoE normalizes q and k over all heads at once
            tensors += [
                SynthTensor(p + "self_attn.q_norm.weight", (heads * head_dim,), bf16, "ones"),
                SynthTensor(p + "self_attn.k_norm.weight", (kv_heads * head_dim,), bf16, "ones"),
            ]
        tensors += _feed_forward(arch, p, hidden, inter, experts, heads)
    tensors.append(SynthTensor("model.norm.weight", (hidden,), bf16, "ones"))
    if not config.get("tie_word_embeddings"):
        tensors.append(SynthTensor("lm_head.weight", (config["vocab_size"], hidden), bf16, "normal"))
    return tensors


def _feed_forward(arch: str, p: str, hidden: int, inter: int, experts: int, heads: int) -> list[SynthTensor]:
    bf16, u8 = torch.bfloat16, torch.uint8
    if arch == "gpt_oss":  # the released MXFP4 layout: (experts, out, in/32, 16) codes, (experts, out, in/32) scales
        e = p + "mlp.experts."
        return [
            SynthTensor(p + "self_attn.sinks", (heads,), bf16, "normal"),
            SynthTensor(p + "mlp.router.weight", (experts, hidden), bf16, "normal"),
            SynthTensor(p + "mlp.router.bias", (experts,), bf16, "zeros"),
            SynthTensor(e + "gate_up_proj_blocks", (experts, 2 * inter, hidden // MXFP4_BLOCK, 16), u8, "codes"),
            SynthTensor(e + "gate_up_proj_scales", (experts, 2 * inter, hidden // MXFP4_BLOCK), u8, "scales"),
            SynthTensor(e + "gate_up_proj_bias", (experts, 2 * inter), bf16, "zeros"),
            SynthTensor(e + "down_proj_blocks", (experts, hidden, inter // MXFP4_BLOCK, 16), u8, "codes"),
            SynthTensor(e + "down_proj_scales", (experts, hidden, inter // MXFP4_BLOCK), u8, "scales"),
            SynthTensor(e + "down_proj_bias", (experts, hidden), bf16, "zeros"),
        ]
    block, gate, up, down = PER_EXPERT_LAYOUT[arch]  # the hub's names, which the streaming build reads back
    moe = p + block
    tensors = [SynthTensor(moe + "gate.weight", (experts, hidden), bf16, "normal")]  # the router
    for x in range(experts):
        tensors += [
            SynthTensor(moe + f"experts.{x}.{gate}.weight", (inter, hidden), bf16, "normal"),
            SynthTensor(moe + f"experts.{x}.{up}.weight", (inter, hidden), bf16, "normal"),
            SynthTensor(moe + f"experts.{x}.{down}.weight", (hidden, inter), bf16, "normal"),
        ]
    return tensors


def tensor_values(tensor: SynthTensor, seed: int) -> torch.Tensor:
    """The tensor's values: a function of the seed and its name alone."""
    if tensor.kind == "ones":
        return torch.ones(tensor.shape, dtype=tensor.dtype)
    if tensor.kind == "zeros":
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tensor.name.encode()))
    if tensor.kind == "codes":  # every FP4 code equally likely, two per byte
        return torch.randint(0, 256, tensor.shape, generator=generator, dtype=torch.uint8)
    if tensor.kind == "scales":  # E8M0 2^-9 .. 2^-6: the values' std about 0.02, as the bf16 tensors'
        return torch.randint(127 - 9, 127 - 5, tensor.shape, generator=generator, dtype=torch.uint8)
    values = torch.empty(tensor.shape, dtype=torch.float32)
    values.normal_(0.0, 0.02, generator=generator)
    return values.to(tensor.dtype)


def shard_plan(tensors: list[SynthTensor], shard_bytes: int) -> list[list[SynthTensor]]:
    """Tensors split into consecutive shards of at most ``shard_bytes`` each (a larger tensor alone)."""
    shards: list[list[SynthTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def synthesize(
    family: str,
    out: Path,
    layers: int,
    *,
    experts: int | None = None,
    vocab: int | None = None,
    seed: int = 0,
    shard_bytes: int = 5 * 10**9,
    progress=None,
) -> Path:
    """Writes the synthetic checkpoint to ``out`` (through a temporary sibling, renamed at the end)."""
    config = synth_config(family, layers, experts, vocab)
    return write_checkpoint(config, out, seed=seed, shard_bytes=shard_bytes, progress=progress)


def write_checkpoint(config: dict, out: Path, *, seed: int = 0, shard_bytes: int = 5 * 10**9, progress=None) -> Path:
    """Random weights for ``config`` (a family's config, any sizes) in its hub layout, shard by shard."""
    from safetensors.torch import save_file

    tokenizer_folder = _tokenizer_folder()
    config = json.loads(json.dumps(config))
    config.setdefault("quantlab_synth", {})["seed"] = seed
    tensors = checkpoint_tensors(config)
    shards = shard_plan(tensors, shard_bytes)
    total = sum(t.nbytes for t in tensors)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with atomic_directory(out, force=False, needed_bytes=total) as tmp:
        weight_map = {}
        for index, (file_name, shard) in enumerate(zip(names, shards)):
            if progress:
                progress(index, len(shards), file_name)
            save_file({t.name: tensor_values(t, seed) for t in shard}, str(tmp / file_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys((t.name for t in shard), file_name))
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / _INDEX).write_text(json.dumps(index_json, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in _TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                shutil.copy(tokenizer_folder / name, tmp / name)
    return out


def _tokenizer_folder() -> Path:
    """Where the tokenizer files come from: the default model's folder (a plugin registers it)."""

    return resolve_model(default_model())


def _tokenizer_size() -> int:
    return int(json.loads((_tokenizer_folder() / "config.json").read_text())["vocab_size"])


def parse_size(text: str) -> int:
    """Bytes from a size such as ``5GB``, ``500MB`` or ``1000000`` (decimal units, as the hub's shards)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not match or float(match[1]) <= 0:
        raise UserError(f"--shard-size {text!r}: give a positive size such as 5GB or 500MB")
    scale = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[match[2]]
    return int(float(match[1]) * scale)
