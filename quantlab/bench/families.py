"""``quantlab bench families``: every synthetic family of real shapes (``quantlab zoo synth``) through the lab.

For each family: the released widths, head layouts and on-disk layout with fewer layers (and, to keep a CPU run
short, fewer experts, recorded), then
- an F32 GGUF export loaded by llama.cpp, its logits against transformers' (relative L2);
- builds of mxfp4 experts, int4 GPTQ (group 32: 128 does not divide gpt-oss's 2880) and llama.cpp's Q4_K_M;
- the Q4_K_M variant's GGUF against llama-quantize run on the same model's F32 export: every tensor's type and
  bytes;
- measure (KL on the embedded tasks' text) and a short evaluation (GPQA-style log-likelihood) of Q4_K_M.
The weights are random, so accuracies say only that the evaluation ran; the KL says where the damage is.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from quantlab.models.loading import load_model
from quantlab.presets import llama_quantize
from quantlab.stages import build as builder
from quantlab.stages.evaluate.run import evaluate
from quantlab.stages.measure.run import measure_variant
from quantlab.stages.synthetic import synthesize

DEFAULT_EXPERTS = {"gpt-oss-20b": 4, "gpt-oss-120b": 4, "qwen3-30b-a3b": 8, "mixtral-8x7b": 2, "olmoe-1b-7b": 8}
RECIPES = {
    "f32-export": "groups:\n  - select: {component: experts}\n    format: bf16\nexports: [gguf]\n",
    "mxfp4": "groups:\n  - select: {component: experts}\n    format: mxfp4\n",
    "int4-gptq": (
        'calibration: {dataset: "zoo:aime-style", samples: 16, sequence_length: 64, seed: 0}\ngroups:\n'
        "  - select: {component: experts}\n    format: {name: int4, group_size: 32}\n    method: gptq\n"
    ),
    "gguf-q4_k_m": "preset: gguf-q4_k_m\nexports: [gguf]\n",
}


def _same_as_llama_quantize(model_folder: Path, variant_gguf: Path, work: Path) -> dict:
    """Types and bytes of the variant's GGUF against llama-quantize's Q4_K_M of the model's own F32 export."""
    import gguf
    import numpy as np
    import torch

    model, tokenizer = load_model(model_folder, dtype=torch.float32)
    theirs = {t.name: t for t in gguf.GGUFReader(llama_quantize(model, tokenizer, "gguf-q4_k_m", work)).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(variant_gguf).tensors}
    types = {n: t.tensor_type.name for n, t in theirs.items()}
    return {
        "tensors": len(theirs),
        "same_types": all(ours[n].tensor_type == t.tensor_type for n, t in theirs.items()),
        "same_bytes": all(np.array_equal(np.asarray(ours[n].data), np.asarray(t.data)) for n, t in theirs.items()),
        "types": sorted(set(types.values())),
    }


def run_family(family: str, layers: int, experts: int | None, work: Path, progress=None) -> dict:
    """One family through synth, the builds, the llama-quantize comparison, measure and a short eval."""

    say = progress or (lambda message: None)
    folder = work / family
    started = time.perf_counter()
    synthesize(family, folder / "model", layers, experts=experts, vocab=256)
    store = folder / "store"
    row: dict = {"family": family, "layers": layers, "experts": experts, "seconds": {}}
    for name, body in RECIPES.items():
        say(f"{family}: build {name}")
        recipe = folder / f"{name}.yaml"
        recipe.write_text(f"name: {name}\nmodel: {folder / 'model'}\n{body}")
        tick = time.perf_counter()
        result = builder.build(recipe, store)
        row["seconds"][f"build {name}"] = round(time.perf_counter() - tick, 1)
        if name == "f32-export":
            row["f32_logits_relative_l2"] = result.manifest.exports["gguf"]["logits_vs_variant"]["relative_l2"]
            row["runtime_departures"] = result.manifest.exports["gguf"]["runtime_departures"]
        if name == "int4-gptq":
            rows = [r for r in result.manifest.tensors if r.get("method", "").startswith("gptq")]
            row["gptq_matrices"] = len(rows)
            row["gptq_rtn_fallbacks"] = sum("method_fallback" in r for r in rows)
    say(f"{family}: llama-quantize on the F32 export")
    row["q4_k_m_vs_llama_quantize"] = _same_as_llama_quantize(
        folder / "model", store / "gguf-q4_k_m" / "model.gguf", folder
    )
    say(f"{family}: measure and eval")
    measured = measure_variant("gguf-q4_k_m", artifacts=store, max_tokens=1024)
    kld = measured.logits["response_tokens"]["kl_divergence"]
    row["q4_k_m_kld"] = {"mean": kld["mean"], "n": kld["n"]}
    row["q4_k_m_kld_llama_cpp"] = (measured.llama_cpp or {})["logits"]["response_tokens"]["kl_divergence"]["mean"]
    evaluated = evaluate("gguf-q4_k_m", "zoo_gpqa_style", limit=20, artifacts=store)
    row["q4_k_m_eval"] = {"task": "zoo_gpqa_style", "accuracy": evaluated.score, "items": evaluated.items}
    row["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return row


def run_families(families: list[str], layers: int = 1, experts: dict | None = None, progress=None) -> list[dict]:
    experts = DEFAULT_EXPERTS | (experts or {})
    with tempfile.TemporaryDirectory(prefix="quantlab-families-") as folder:
        return [run_family(f, layers, experts.get(f), Path(folder), progress) for f in families]
