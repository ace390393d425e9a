"""Presets named as the ecosystem names them (``gguf-q4_k_m``), resolved by the ecosystem's own tool.

llama.cpp's ``llama-quantize`` chooses a type per tensor for each preset (Q4_K_M puts some ffn_down and
attn_v tensors in Q6_K, the output in Q6_K, ...), by rules that change between releases. quantlab does not
guess them: it writes the baseline as an F32 GGUF, runs llama.cpp's quantizer (``llama_model_quantize``,
through llama-cpp-python) on it, and reads back the type of every tensor. Without an importance matrix ggml
then quantizes each tensor exactly as llama-quantize does, so the variant's GGUF export holds llama-quantize's
own bytes (``tests/test_presets.py``).
"""

from __future__ import annotations

import ctypes
import tempfile
from pathlib import Path

import torch

from quantlab.errors import UserError
from quantlab.export.gguf import export_gguf, gguf_layout
from quantlab.formats import get_format
from quantlab.runtimes.llama_cpp import llama_cpp_module

LLAMA_CPP_PRESETS = {
    "gguf-q8_0": "Q8_0",
    "gguf-q6_k": "Q6_K",
    "gguf-q5_k_m": "Q5_K_M",
    "gguf-q4_k_m": "Q4_K_M",
    "gguf-q4_k_s": "Q4_K_S",
    "gguf-q3_k_m": "Q3_K_M",
    "gguf-q2_k": "Q2_K",
    "gguf-iq4_xs": "IQ4_XS",
    "gguf-mxfp4_moe": "MXFP4_MOE",
}
_FLOAT_TYPES = {"F32": "keep", "BF16": "bf16", "F16": "fp16"}


def llama_cpp_tensor_types(model, tokenizer, preset: str) -> dict[str, str]:
    """GGUF tensor name -> the ggml type llama.cpp's quantizer gives it under ``preset``."""
    import gguf

    with tempfile.TemporaryDirectory(prefix="quantlab-preset-") as folder:
        target = llama_quantize(model, tokenizer, preset, Path(folder))
        return {t.name: t.tensor_type.name for t in gguf.GGUFReader(target).tensors}


def llama_quantize(model, tokenizer, preset: str, folder: Path) -> Path:
    """``folder/quantized.gguf``: llama.cpp's quantizer (``llama_model_quantize``, as llama-quantize runs it) on
    the model written as ``folder/f32.gguf``."""

    llama_cpp = llama_cpp_module()
    source, target = folder / "f32.gguf", folder / "quantized.gguf"
    export_gguf(model, tokenizer, {}, source)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_CPP_PRESETS[preset]}")
    params.nthread = torch.get_num_threads()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise UserError(f"preset {preset}: llama.cpp's quantizer failed (status {status}) on this model")
    return target


def preset_formats(model, tokenizer, preset: str) -> dict[str, str]:
    """Unit name -> quantlab format name (``gguf:Q6_K``, ``keep``) that llama.cpp's ``preset`` chooses.

    gpt-oss's fused gate_up holds two GGUF tensors (gate and up); should llama.cpp give them different types,
    the one with more bits per weight wins (the unit is one matrix, quantized once).
    """

    types = llama_cpp_tensor_types(model, tokenizer, preset)
    experts = getattr(model.config, "num_local_experts", 1)
    chosen: dict[str, str] = {}
    for slot in gguf_layout(model.config):
        if slot.kind == "vector" or slot.gguf_name not in types:
            continue
        ggml_type = types[slot.gguf_name]
        name = _FLOAT_TYPES.get(ggml_type, f"gguf:{ggml_type}")
        for unit in slot.units(experts):
            previous = chosen.get(unit)
            if previous is None or _bits(name) > _bits(previous):
                chosen[unit] = name
    return chosen


def _bits(name: str) -> float:
    return 32.0 if name == "keep" else get_format(name).bits_per_weight
