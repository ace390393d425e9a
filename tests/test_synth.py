"""Synthetic checkpoints of real shapes (``quantlab zoo synth``): stored as the hub stores each family (checked
against transformers' own saving and loading), and the lab's stages on a gpt-oss-20b-shaped model whose 2880-wide
rows are not a multiple of 256 (checked against llama.cpp's own quantizer and runtime)."""

import ctypes
import json

import numpy as np
import pytest
import torch
from conftest import small_family_config as _small
from safetensors import safe_open

from quantlab.errors import UserError
from quantlab.stages.synthetic import FAMILIES, checkpoint_tensors, synth_config, synthesize

# OCP MXFP4 (E2M1) code -> value, from the OCP Microscaling Formats specification v1.0, table 5
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


@pytest.mark.parametrize("family", ["gpt-oss-20b", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b"])
def test_tensor_names_and_shapes_are_those_transformers_saves(family):
    """transformers 5 saves each family in its hub layout (it reverses its in-memory fusing): our tensor list
    must be that list. gpt-oss's experts are checked against transformers' MXFP4 packing: (experts, out, in/32,
    16) bytes and (experts, out, in/32) scales for a parameter transformers holds as (experts, in, out)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _small(family)
    plain = {k: v for k, v in config.items() if k not in ("quantization_config", "quantlab_synth")}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**plain))
    from transformers.core_model_loading import revert_weight_conversion

    theirs = {k: tuple(v.shape) for k, v in revert_weight_conversion(model, model.state_dict()).items()}
    ours = {t.name: t.shape for t in checkpoint_tensors(config)}
    if config["model_type"] == "gpt_oss":
        for name in [n for n in ours if n.endswith("_blocks")]:
            experts, out, groups, sixteen = ours.pop(name)
            scales = ours.pop(name.replace("_blocks", "_scales"))
            assert sixteen == 16 and scales == (experts, out, groups)
            ours[name.removesuffix("_blocks")] = (experts, groups * 32, out)
    assert ours == theirs


def test_gpt_oss_release_is_stored_as_mxfp4_and_dequantizes_by_the_spec(tmp_path):
    from quantlab.models.loading import load_model

    folder = synthesize("gpt-oss-20b", tmp_path / "g", layers=1, experts=4, vocab=256, shard_bytes=30 * 10**6)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (2880, 64, 8)
    assert config["quantlab_synth"]["released"] == {"layers": 24, "experts": 32, "vocab": 201088}

    name = "model.layers.0.mlp.experts.down_proj"
    with safe_open(folder / index["weight_map"][name + "_blocks"], "pt") as f:
        blocks = f.get_tensor(name + "_blocks")[1, :3].long()  # expert 1, the first three output rows
    with safe_open(folder / index["weight_map"][name + "_scales"], "pt") as f:
        scales = f.get_tensor(name + "_scales")[1, :3].long()
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).reshape(3, -1)  # the low nibble holds the even value
    by_spec = torch.tensor(E2M1)[codes] * torch.exp2(scales.float() - 127).repeat_interleave(32, dim=1)

    model, _ = load_model(folder, dtype=torch.float32)  # transformers dequantizes the release on a CPU
    loaded = model.model.layers[0].mlp.experts.down_proj[1].T[:3]  # held (in, out): rows are outputs
    assert torch.equal(loaded, by_spec)
    again = synthesize(  # the same command writes the same bytes
        "gpt-oss-20b", tmp_path / "h", layers=1, experts=4, vocab=256, shard_bytes=30 * 10**6
    )
    assert all((folder / s).read_bytes() == (again / s).read_bytes() for s in shards)


def test_wrong_arguments_are_one_line_errors():
    with pytest.raises(UserError, match="unknown model family 'gpt-oss-7b'; available: gpt-oss-20b"):
        synth_config("gpt-oss-7b", 1)
    with pytest.raises(UserError, match="--experts must be at least mixtral-8x7b's 2"):
        synth_config("mixtral-8x7b", 1, experts=1)
    with pytest.raises(UserError, match="--vocab must be at least"):
        synth_config("olmoe-1b-7b", 1, vocab=10)
    assert set(FAMILIES) == {"gpt-oss-20b", "gpt-oss-120b", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b"}


# --- the stages on a gpt-oss-20b-shaped model ------------------------------------------------------------------

llama_cpp = pytest.importorskip("llama_cpp", reason="the GGUF checks need quantlab[gguf]")
gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gpt_oss_20b(tmp_path_factory):
    """One layer of gpt-oss-20b (four of its 32 experts, 256 of its 201,088 vocabulary rows), as released."""
    root = tmp_path_factory.mktemp("synth")
    folder = synthesize("gpt-oss-20b", root / "gpt-oss-20b-1l", layers=1, experts=4, vocab=256)
    return root, folder


def _recipe(root, name: str, body: str, model) -> str:
    path = root / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {model}\n{body}")
    return str(path)


def test_mxfp4_of_the_release_is_the_release_and_its_gguf_is_mxfp4(gpt_oss_20b):
    """The release already lies on the MXFP4 grid, so re-quantizing it to MXFP4 changes nothing (the OCP scale
        of a block is recovered from its largest value, or a smaller power of two with every code scaled up by the same
        factor, which stays on the grid). The native export is the released layout again, holding the release's values
    (decoded by transformers' own MXFP4 decoder; a block whose largest code is below 4 is re-encoded with the OCP
    rule's smaller scale, so its bytes may differ)."""
    from quantlab.stages import build as builder

    root, folder = gpt_oss_20b
    body = "groups:\n  - select: {component: experts}\n    format: mxfp4\nexports: [gguf, native]\n"
    recipe = _recipe(root, "mxfp4", body, folder)
    result = builder.build(recipe, root / "artifacts")
    rows = [r for r in result.manifest.tensors if r["component"] == "experts"]
    assert len(rows) == 8 and all(r["error"]["relative_error"] == 0 for r in rows)
    types = {t["name"]: t["type"] for t in result.manifest.exports["gguf"]["tensor_types"]}
    assert types["blk.0.ffn_down_exps.weight"] == types["blk.0.ffn_gate_exps.weight"] == "MXFP4"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    exported = {}
    for file in (result.path / "native").glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            exported |= {k: f.get_tensor(k) for k in f.keys() if k.endswith(("_blocks", "_scales"))}
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    assert len(exported) == 4
    for name in [n for n in exported if n.endswith("_blocks")]:
        scales = name.replace("_blocks", "_scales")
        with (
            safe_open(folder / index["weight_map"][name], "pt") as f,
            safe_open(folder / index["weight_map"][scales], "pt") as g,
        ):
            released = convert_moe_packed_tensors(f.get_tensor(name), g.get_tensor(scales), dtype=torch.float32)
        ours = convert_moe_packed_tensors(exported[name], exported[scales], dtype=torch.float32)
        assert torch.equal(ours, released), name


def test_f32_gguf_export_matches_transformers(gpt_oss_20b):
    """llama.cpp rounds YaRN's correction range to whole dimensions; gpt-oss's release says ``truncate: false``
    (OpenAI's reference does not round; vLLM added the option for it, vllm-project/vllm#28244). With the rounding
    asked for, the F32 export's logits are within 1e-3 of transformers'; as released, the export's manifest names
    the departure and its size."""
    import shutil

    from quantlab.stages import build as builder

    root, folder = gpt_oss_20b
    rounded = root / "gpt-oss-20b-1l-truncate"
    shutil.copytree(folder, rounded)
    config = json.loads((rounded / "config.json").read_text())
    config["rope_scaling"]["truncate"] = True
    (rounded / "config.json").write_text(json.dumps(config))
    body = "groups:\n  - select: {component: experts}\n    format: bf16\nexports: [gguf]\n"
    same_rope = builder.build(_recipe(root, "f32t", body, rounded), root / "artifacts").manifest.exports["gguf"]
    assert same_rope["logits_vs_variant"]["relative_l2"] <= 1e-3, same_rope
    assert not same_rope["runtime_departures"]
    released = builder.build(_recipe(root, "f32", body, folder), root / "artifacts").manifest.exports["gguf"]
    assert released["runtime_departures"] == [
        "llama.cpp rounds YaRN's correction range to whole dimensions; this config says truncate: false"
    ]
    assert released["logits_vs_variant"]["relative_l2"] < 1e-2


def test_q4_k_m_at_2880_wide_rows_is_llama_quantize_s(gpt_oss_20b):
    """2880 is not a multiple of 256: llama.cpp substitutes a 32-block type for its k-quants. The variant's GGUF
    must hold exactly what llama-quantize writes from the same model's F32 export, type and bytes."""
    from quantlab.export.gguf import export_gguf
    from quantlab.models.loading import load_model
    from quantlab.stages import build as builder
    from quantlab.stages.evaluate.run import evaluate
    from quantlab.stages.measure.run import measure_variant

    root, folder = gpt_oss_20b
    result = builder.build(_recipe(root, "q4km", "preset: gguf-q4_k_m\nexports: [gguf]\n", folder), root / "artifacts")
    ours = {t.name: t for t in gguf.GGUFReader(result.path / "model.gguf").tensors}

    model, tokenizer = load_model(folder, dtype=torch.float32)
    export_gguf(model, tokenizer, {}, root / "f32.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    status = llama_cpp.llama_model_quantize(
        str(root / "f32.gguf").encode(), str(root / "q4km-llama.gguf").encode(), ctypes.byref(params)
    )
    assert status == 0
    theirs = {t.name: t for t in gguf.GGUFReader(root / "q4km-llama.gguf").tensors}
    assert set(ours) == set(theirs)
    kinds = {t.tensor_type.name for t in theirs.values()}
    assert {"Q5_0", "Q4_K"} <= kinds  # the fallback for 2880-wide rows, and k-quants for 4096-wide ones
    for name, tensor in theirs.items():
        assert ours[name].tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(tensor.data)), name

    # ... and the stages after the build run on it: measure (torch and llama.cpp) and a short evaluation
    measured = measure_variant(str(result.path), max_tokens=512, artifacts=root / "artifacts")
    llama = measured.llama_cpp  # a GGUF variant is also measured with llama.cpp running its file
    assert llama is not None and llama["logits"]["response_tokens"]["n"] == measured.logits["response_tokens"]["n"] > 0
    evaluated = evaluate(str(result.path), "zoo_gpqa_style", limit=4, artifacts=root / "artifacts")
    assert evaluated.items == 4 and evaluated.stored_at.is_file() and not evaluated.cache_hit


def test_int4_gptq_at_gpt_oss_widths(gpt_oss_20b):
    """GPTQ needs the group size to divide 2880 (128 does not: a one-line recipe error); 32 builds."""
    from quantlab.stages import build as builder

    root, folder = gpt_oss_20b
    body = (
        'calibration: {dataset: "zoo:aime-style", samples: 8, sequence_length: 64, seed: 0}\ngroups:\n'
        "  - select: {component: [experts, attention]}\n    format: {name: int4, group_size: GROUP}\n"
        "    method: {name: gptq, damp: 0.01}\n"
    )
    with pytest.raises(UserError, match="rows of 2880 values are not a multiple of 128"):
        builder.build(_recipe(root, "gptq128", body.replace("GROUP", "128"), folder), root / "artifacts")
    result = builder.build(_recipe(root, "gptq32", body.replace("GROUP", "32"), folder), root / "artifacts")
    rows = [r for r in result.manifest.tensors if r.get("method", "").startswith("gptq")]
    assert len(rows) == 12 and all(0 < r["error"]["relative_error"] < 0.2 for r in rows)
