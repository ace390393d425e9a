"""Presets resolved by llama.cpp's own quantizer: the variant's GGUF export holds llama-quantize's bytes."""

import ctypes

import numpy as np
import pytest
import torch

from quantlab.stages import build as builder

llama_cpp = pytest.importorskip("llama_cpp", reason="presets need quantlab[gguf]")
gguf = pytest.importorskip("gguf")
REPO_RECIPES = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("preset", ["gguf-q4_k_m", "gguf-q2_k"])
def test_preset_export_equals_llama_quantize(preset, tmp_path):
    from quantlab.export.gguf import export_gguf
    from quantlab.models.loading import load_model, resolve_model
    from quantlab.presets import LLAMA_CPP_PRESETS

    result = builder.build(REPO_RECIPES / f"{preset}.yaml", tmp_path / "artifacts")
    ours = {t.name: t for t in gguf.GGUFReader(result.path / "model.gguf").tensors}

    # llama-quantize itself, on the baseline written as F32.
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    export_gguf(model, tokenizer, {}, tmp_path / "f32.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_CPP_PRESETS[preset]}")
    assert (
        llama_cpp.llama_model_quantize(
            str(tmp_path / "f32.gguf").encode(), str(tmp_path / "q.gguf").encode(), ctypes.byref(params)
        )
        == 0
    )
    theirs = {t.name: t for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}

    assert set(ours) == set(theirs)
    quantized = [n for n, t in theirs.items() if t.tensor_type.name not in ("F32", "F16", "BF16")]
    assert len(quantized) > 20
    for name in quantized:
        assert ours[name].tensor_type == theirs[name].tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(theirs[name].data)), name
