"""The ``gguf`` export: a variant as one GGUF file that llama.cpp loads.

Tensor types follow the plan: a matrix quantized to a GGUF type is written as the exact ggml block bytes
quantlab produced (so llama.cpp computes with the very values quantlab measured); OCP ``mxfp4`` is written as
GGUF MXFP4, which holds the same values (same E2M1 grid, same E8M0 scale; only tie rounding differs, and the
values are already on the grid); everything else is written as its dequantized values in F32 (exact). A fused
expert tensor whose experts got different formats cannot be one GGUF tensor of one type, so it too is written
as F32 values; ``export_gguf`` returns every tensor's type and why.

Only the architectures llama.cpp and quantlab both know are mapped; gpt-oss is the embedded default's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantlab.errors import UserError
from quantlab.export.base import Export
from quantlab.formats import Packed, get_format

# transformers model_type -> llama.cpp architecture (Mixtral is llama.cpp's "llama" with experts)
GGUF_ARCH = {"gpt_oss": "gpt-oss", "llama": "llama", "mixtral": "llama", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}


@dataclass
class GGUFTensor:
    name: str
    data: np.ndarray  # float values, or uint8 block bytes with a trailing row-bytes axis
    ggml_type: str  # "F32" or a quantized ggml type name
    why: str


def _float_tensor(name: str, value: torch.Tensor, why: str) -> GGUFTensor:
    """Dequantized (or kept) values as F32: exact for every value quantlab computes with."""
    return GGUFTensor(name, value.detach().float().numpy().astype(np.float32), "F32", why)


def _matrix_as_gguf(packed: Packed | None, dequantized: torch.Tensor):
    """(uint8 block bytes (out, row_bytes), type) when the matrix can be written as a quantized GGUF type."""
    if packed is None:
        return None
    if "blocks" in packed.data:  # a GGUF type: its block bytes as stored (a fallback's type is in the notes)
        return packed.data["blocks"].numpy(), packed.notes["ggml_type"]
    if packed.format.startswith("mxfp4("):
        # Same values in GGUF MXFP4: re-encode the (on-grid) dequantized values with ggml's quantizer.
        regguf = get_format("gguf:MXFP4").quantize(dequantized)
        if torch.equal(get_format("gguf:MXFP4").dequantize(regguf), dequantized):
            return regguf.data["blocks"].numpy(), "MXFP4"
    return None


def export_gguf(model, tokenizer, packed_by_unit: dict[str, Packed], path: Path) -> list[dict]:
    """Writes the variant ``model`` (its parameters hold the dequantized values) as a GGUF file; returns each
    tensor's name, type and why."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    return _write(model.config, tokenizer, _gguf_tensors(model.config, params.__getitem__, packed_by_unit), path)


def export_gguf_streamed(config, tokenizer, parameter: Callable[[str], torch.Tensor], packed_by_unit, path: Path):
    """The same file as ``export_gguf``, with one GGUF tensor in memory at a time: ``parameter(name)`` reads a
    parameter's values (from the streamed variant's shards) and ``packed_by_unit`` reads packed matrices on
    demand (``get`` and ``in``); gguf-py's writer spools each tensor's bytes to a temporary file until the
    header, which needs every tensor's size, is written."""
    return _write(config, tokenizer, _gguf_tensors(config, parameter, packed_by_unit), path, spool=True)


@dataclass(frozen=True)
class Slot:
    """One GGUF tensor and where its values come from in the transformers model."""

    gguf_name: str
    hf_name: str  # the parameter
    kind: str  # "matrix" (a 2-D unit), "experts" (a fused 3-D tensor, one unit per expert), "vector"
    # a slice or index list of each matrix's rows (gate/up halves, llama's q/k permutation)
    rows: slice | list[int] | None = None
    columns: slice | None = None  # for vectors: the part of a fused bias

    def units(self, experts: int) -> list[str]:
        return [f"{self.hf_name}[{e}]" for e in range(experts)] if self.kind == "experts" else [self.hf_name]


def runtime_departures(config) -> list[str]:
    """What llama.cpp computes differently from transformers for this config, in words (empty: nothing known).

    llama.cpp always rounds YaRN's correction range to whole rotary dimensions (``ggml_rope_yarn_corr_dims``);
    gpt-oss's release says ``truncate: false``, as OpenAI's reference computes it, which transformers follows.
    """
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "yarn" and rope.get("truncate") is False:
        return ["llama.cpp rounds YaRN's correction range to whole dimensions; this config says truncate: false"]
    return []


def _rope_permutation(rows: int, heads: int) -> list[int]:
    """llama.cpp's "llama" architecture rotates interleaved pairs where transformers rotates halves: its
    converter reorders q and k rows per head (half i of a head's rows goes to position 2i); same here."""
    per_head = rows // heads
    order = []
    for head in range(heads):
        base = head * per_head
        for i in range(per_head // 2):
            order += [base + i, base + per_head // 2 + i]
    return order


def gguf_layout(config) -> list[Slot]:
    """Every tensor of the GGUF file of a ``config`` model, in file order."""
    arch = config.model_type
    if arch not in GGUF_ARCH:
        raise UserError(f"gguf export: architecture {arch!r} is not mapped yet (mapped: {', '.join(GGUF_ARCH)})")
    if arch == "olmoe" and config.num_key_value_heads != config.num_attention_heads:
        raise UserError(
            "gguf export: llama.cpp's OLMoE needs as many key/value heads as query heads (its k_norm spans "
            f"the hidden size); this model has {config.num_key_value_heads} and {config.num_attention_heads}"
        )
    slots = [Slot("token_embd.weight", "model.embed_tokens.weight", "matrix")]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for i in range(config.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        slots.append(Slot(b + "attn_norm.weight", p + "input_layernorm.weight", "vector"))
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            rows = None
            if GGUF_ARCH[arch] == "llama" and hf in ("q_proj", "k_proj"):
                heads = config.num_attention_heads if hf == "q_proj" else config.num_key_value_heads
                rows = _rope_permutation(heads * head_dim, heads)
            slots.append(Slot(b + f"{gg}.weight", p + f"self_attn.{hf}.weight", "matrix", rows=rows))
            if arch == "gpt_oss":
                slots.append(Slot(b + f"{gg}.bias", p + f"self_attn.{hf}.bias", "vector"))
        if arch in ("qwen3_moe", "olmoe"):
            slots += [
                Slot(b + "attn_q_norm.weight", p + "self_attn.q_norm.weight", "vector"),
                Slot(b + "attn_k_norm.weight", p + "self_attn.k_norm.weight", "vector"),
            ]
        if arch == "gpt_oss":
            slots += _gpt_oss_feed_forward(p, b)
            continue
        slots.append(Slot(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", "vector"))
        if arch == "llama":
            slots += [
                Slot(b + f"ffn_{part}.weight", p + f"mlp.{part}_proj.weight", "matrix")
                for part in ("gate", "up", "down")
            ]
            continue
        # Mixtral, Qwen3-MoE, OLMoE: gate_up_proj (experts, 2I, H) holds gate in its first half, up in its second
        half = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        slots += [
            Slot(b + "ffn_gate_inp.weight", p + "mlp.gate.weight", "matrix"),
            Slot(b + "ffn_gate_exps.weight", p + "mlp.experts.gate_up_proj", "experts", rows=slice(0, half)),
            Slot(b + "ffn_up_exps.weight", p + "mlp.experts.gate_up_proj", "experts", rows=slice(half, 2 * half)),
            Slot(b + "ffn_down_exps.weight", p + "mlp.experts.down_proj", "experts", rows=slice(None)),
        ]
    slots.append(Slot("output_norm.weight", "model.norm.weight", "vector"))
    if not getattr(config, "tie_word_embeddings", False):
        slots.append(Slot("output.weight", "lm_head.weight", "matrix"))
    return slots


def _gpt_oss_feed_forward(p: str, b: str) -> list[Slot]:
    return [
        Slot(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", "vector"),
        Slot(b + "attn_sinks.weight", p + "self_attn.sinks", "vector"),
        Slot(b + "ffn_gate_inp.weight", p + "mlp.router.weight", "matrix"),
        Slot(b + "ffn_gate_inp.bias", p + "mlp.router.bias", "vector"),
        # gpt-oss interleaves gate (even rows of the (out, in) gate_up matrix) and up (odd rows)
        Slot(b + "ffn_gate_exps.weight", p + "mlp.experts.gate_up_proj", "experts", rows=slice(0, None, 2)),
        Slot(b + "ffn_up_exps.weight", p + "mlp.experts.gate_up_proj", "experts", rows=slice(1, None, 2)),
        Slot(b + "ffn_down_exps.weight", p + "mlp.experts.down_proj", "experts", rows=slice(None)),
        Slot(b + "ffn_gate_exps.bias", p + "mlp.experts.gate_up_proj_bias", "vector", columns=slice(0, None, 2)),
        Slot(b + "ffn_up_exps.bias", p + "mlp.experts.gate_up_proj_bias", "vector", columns=slice(1, None, 2)),
        Slot(b + "ffn_down_exps.bias", p + "mlp.experts.down_proj_bias", "vector"),
    ]


def _gguf_tensors(config, parameter: Callable[[str], torch.Tensor], packed_by_unit) -> Iterator[GGUFTensor]:
    """Each GGUF tensor of the layout in turn, from ``parameter(hf_name)`` and the packed matrices."""
    for slot in gguf_layout(config):
        value = parameter(slot.hf_name)
        if slot.kind == "vector":
            value = value if slot.columns is None else value[..., slot.columns]
            yield GGUFTensor(slot.gguf_name, value.float().numpy().astype(np.float32), "F32", "vector")
        elif slot.kind == "matrix":
            packed = packed_by_unit.get(slot.hf_name)
            as_gguf = _matrix_as_gguf(packed, value.float())
            rows = slice(None) if slot.rows is None else slot.rows
            if as_gguf is not None:
                yield GGUFTensor(slot.gguf_name, as_gguf[0][rows], as_gguf[1], "the plan's format")
            else:
                why = "kept" if packed is None else f"{packed.format} has no GGUF type: dequantized values"
                yield _float_tensor(slot.gguf_name, value[rows], why)
        else:
            yield _expert_tensor(slot, value, packed_by_unit, config.model_type == "gpt_oss")


def _expert_tensor(slot: Slot, value: torch.Tensor, packed_by_unit, transposed: bool) -> GGUFTensor:
    """A fused expert tensor (experts, out, in): one GGUF type if every expert has the same one. Experts are
    converted to float32 one at a time (a streamed export of a 32-expert gate_up would otherwise hold 2 GB)."""

    def matrix(e: int) -> torch.Tensor:
        return (value[e].T if transposed else value[e]).float()  # gpt-oss: (E, in, out)

    names = slot.units(value.shape[0])
    encoded = [_matrix_as_gguf(packed_by_unit.get(name), matrix(e)) for e, name in enumerate(names)]
    as_gguf = [x for x in encoded if x is not None]
    types = {x[1] for x in as_gguf}
    if len(as_gguf) == len(encoded) and len(types) == 1:
        return GGUFTensor(
            slot.gguf_name, np.stack([x[0][slot.rows] for x in as_gguf]), types.pop(), "the plan's format"
        )
    quantized = any(name in packed_by_unit for name in names)
    why = "experts in different or non-GGUF formats: dequantized values" if quantized else "kept"
    return _float_tensor(slot.gguf_name, torch.stack([matrix(e)[slot.rows] for e in range(len(names))]), why)


def _write(config, tokenizer, tensors: Iterable[GGUFTensor], path: Path, spool: bool = False) -> list[dict]:
    """Writes the GGUF file; returns each tensor's name, type and why. ``spool``: each tensor's bytes go to a
    temporary file as it comes (gguf-py's ``use_temp_file``), so only one tensor is held at a time."""
    import gguf

    writer = gguf.GGUFWriter(str(path), GGUF_ARCH[config.model_type], use_temp_file=spool)
    writer.add_name("quantlab variant")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if experts and config.model_type != "llama":
        writer.add_expert_count(experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(
            getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        )
    if config.model_type == "gpt_oss":
        writer.add_sliding_window(config.sliding_window)
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") == "yarn":  # gpt-oss's released configs use YaRN
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope.get("rope_type", "default") != "default":
        raise UserError(f"gguf export: rope_type {rope.get('rope_type')!r} is not mapped yet (default and yarn are)")
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    written = []
    for t in tensors:
        if t.ggml_type == "F32":
            writer.add_tensor(t.name, np.ascontiguousarray(t.data, dtype=np.float32))
        else:
            qtype = gguf.GGMLQuantizationType[t.ggml_type]
            writer.add_tensor(t.name, np.ascontiguousarray(t.data), raw_dtype=qtype)
        written.append({"name": t.name, "type": t.ggml_type, "why": t.why})
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def _is_space_split_bpe(data: dict) -> bool:
    """Whether a tokenizers.json is the zoo's kind: character BPE pre-split at spaces (the space joining the next
    piece) and into single digits, with no byte-level mapping."""
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("behavior")) for p in parts]
    return (
        data["model"].get("type") == "BPE"
        and ("Split", "MergedWithNext") in kinds
        and not any(k == "ByteLevel" for k, _ in kinds)
    )


def _token_type(index: int, token: str, special: dict, unused: set[int]) -> int:
    """llama.cpp's token type: 1 normal, 3 control (a special token), 5 unused (padding)."""
    return 5 if index in unused else 3 if token in special else 1


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The variant's vocabulary for llama.cpp.

    The zoo's tokenizer (character BPE split at spaces and digits) is written as llama.cpp's SentencePiece-style
    "llama" tokenizer: spaces as "▁", no added space prefix, each merged token scored by its merge rank (earlier
    merges score higher). No learned merge crosses a space or a digit, so merging by score over the whole text
    gives exactly the Hugging Face tokenization (tests/test_export_gguf.py compares them). Other tokenizers are
    written as "gpt2" BPE with the default pre-tokenizer: llama.cpp then tokenizes them only approximately, and
    quantlab's own comparisons pass token ids.
    """
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    tokens: list = [None] * max(len(tokenizer), vocab_size)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    for token, index in special.items():
        tokens[index] = token
    # Embedding rows past the tokenizer (a vocabulary padded for the hardware, as released checkpoints pad it)
    # get placeholder tokens that nothing produces, as llama.cpp's converter writes them: its token list must
    # have as many entries as token_embd has rows.
    unused = {i for i, t in enumerate(tokens) if t is None}
    tokens = [f"[PAD{i}]" if i in unused else t for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in data["model"].get("merges", [])]
    if _is_space_split_bpe(data):
        rank = {a + b: i for i, (a, b) in enumerate(merges)}
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([t if t in special else t.replace(" ", "\u2581") for t in tokens])
        writer.add_token_scores([-float(rank[t]) - 1.0 if t in rank else 0.0 for t in tokens])
        writer.add_token_types([_token_type(i, t, special, unused) for i, t in enumerate(tokens)])
        writer.add_add_space_prefix(False)
        writer.add_add_bos_token(False)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([_token_type(i, t, special, unused) for i, t in enumerate(tokens)])
        writer.add_token_merges([" ".join(m) for m in merges])
    if getattr(tokenizer, "chat_template", None):
        # llama.cpp's servers and llama-cpp-python render prompts with the template the GGUF carries
        writer.add_chat_template(tokenizer.chat_template)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    # No BOS declared for a model without one: llama.cpp then takes id 1 (<|start|> here, which opens every
    # chat prompt), and that keeps llama-cpp-python's server right: its echoed prompt log-probabilities are
    # shifted by one position unless the prompt starts with the GGUF's BOS (docs/serving.md; tested)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)


class GGUFExport(Export, name="gguf"):
    path = "model.gguf"
    runs_in_llama_cpp = True

    def write(self, model, tokenizer, packed_by_unit, folder):
        tensor_types = export_gguf(model, tokenizer, packed_by_unit, folder / self.path)
        return self._record(folder, tensor_types, model.config)

    def write_streamed(self, config, tokenizer, parameter, packed_by_unit, groups, folder):
        tensor_types = export_gguf_streamed(config, tokenizer, parameter, packed_by_unit, folder / self.path)
        return self._record(folder, tensor_types, config)

    def _record(self, folder: Path, tensor_types: list[dict], config) -> dict:
        return {
            "file": self.path,
            "bytes": (folder / self.path).stat().st_size,
            "tensor_types": tensor_types,
            "logits_vs_variant": None,  # the build fills it in where the whole variant is in memory
            "runtime_departures": runtime_departures(config),
        }
