"""A GGUF file quantized elsewhere as a subject (``quantlab import``): llama.cpp's own quantizer's file, measured,
gives the statistics of the lab's build of the same preset; the lab's own export imports back to its variant."""

import ctypes

import pytest
import torch

from quantlab.errors import UserError
from quantlab.stages import build as builder

llama_cpp = pytest.importorskip("llama_cpp", reason="GGUF import needs quantlab[gguf]")
REPO_RECIPES = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def community_file(tmp_path_factory):
    """What a community upload of Q4_K_M is: llama-quantize run on the baseline's F32 GGUF."""
    from quantlab.export.gguf import export_gguf
    from quantlab.models.loading import load_model, resolve_model

    folder = tmp_path_factory.mktemp("community")
    model, tokenizer = load_model(resolve_model("zoo:tiny-gpt-oss"), dtype=torch.float32)
    export_gguf(model, tokenizer, {}, folder / "f32.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    source, target = str(folder / "f32.gguf").encode(), str(folder / "tiny-Q4_K_M.gguf").encode()
    assert llama_cpp.llama_model_quantize(source, target, ctypes.byref(params)) == 0
    return folder / "tiny-Q4_K_M.gguf"


def test_llama_quantize_s_file_measures_as_the_lab_s_build(community_file, tmp_path):
    from quantlab.stages.import_gguf import import_gguf
    from quantlab.stages.measure.run import measure_variant

    store = tmp_path / "artifacts"
    imported = import_gguf(community_file, "zoo:tiny-gpt-oss", artifacts=store)
    assert imported.manifest.variant == "tiny-Q4_K_M"
    built = builder.build(REPO_RECIPES / "gguf-q4_k_m.yaml", store)
    theirs = measure_variant("tiny-Q4_K_M", artifacts=store, max_tokens=1024)
    ours = measure_variant("gguf-q4_k_m", artifacts=store, max_tokens=1024)
    assert theirs.logits["response_tokens"]["kl_divergence"]["mean"] > 0
    assert theirs.logits == ours.logits  # the dequantized model, through transformers
    assert theirs.llama_cpp and ours.llama_cpp
    assert theirs.llama_cpp["logits"] == ours.llama_cpp["logits"]  # the file, through llama.cpp
    formats = {r["name"]: r["format"] for r in imported.manifest.tensors}
    assert formats == {r["name"]: r["format"] for r in built.manifest.tensors}
    again = import_gguf(community_file, "zoo:tiny-gpt-oss", artifacts=store)
    assert again.cache_hit


def test_the_lab_s_own_export_imports_back_to_its_variant(tmp_path):
    """An mxfp4 variant's export (experts as GGUF MXFP4, the rest F32) imports to the same weights."""
    from quantlab.models.loading import load_model
    from quantlab.stages.import_gguf import import_gguf

    store = tmp_path / "artifacts"
    built = builder.build(REPO_RECIPES / "mxfp4.yaml", store)
    imported = import_gguf(built.path / "model.gguf", "zoo:tiny-gpt-oss", name="mxfp4-again", artifacts=store)
    ours, _ = load_model(built.path / "model", dtype=torch.float32)
    back, _ = load_model(imported.path / "model", dtype=torch.float32)
    theirs = dict(back.named_parameters())
    for name, parameter in ours.named_parameters():
        assert torch.equal(parameter, theirs[name]), name


def test_a_file_that_is_not_this_model_s_gguf_is_one_line(community_file, tmp_path, cli):
    from quantlab.stages.import_gguf import import_gguf

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UserError, match="junk.gguf: not a readable GGUF file"):
        import_gguf(junk, "zoo:tiny-gpt-oss", artifacts=tmp_path / "a")
    with pytest.raises(UserError, match="no such GGUF file"):
        import_gguf(tmp_path / "missing.gguf", "zoo:tiny-gpt-oss", artifacts=tmp_path / "a")
    result = cli("import", junk, "--model", "zoo:tiny-gpt-oss", "--artifacts", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a readable GGUF file" in result.stderr
    assert not (tmp_path / "junk").exists()
