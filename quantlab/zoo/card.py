"""The model card of a reference checkpoint, assembled from its config, weights, manifest and scores."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from quantlab.models import parameters_per_component
from quantlab.store import sha256_file
from quantlab.zoo import read_json, resolve_checkpoint
from quantlab.zoo.scoring import SCORES_FILE

_CONFIG_KEYS = (
    "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok", "sliding_window",
    "vocab_size", "max_position_embeddings", "swiglu_limit", "dtype",
)  # fmt: skip


class _Shape:
    def __init__(self, shape):
        self.shape = shape

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def model_card(path: Path | None = None) -> dict:
    """Everything ``quantlab zoo info`` shows, read from disk without building the model."""
    path = resolve_checkpoint(path)
    config = read_json(path / "config.json")
    weights = path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        shapes = [(name, _Shape(f.get_slice(name).get_shape())) for name in f.keys()]
    manifest = read_json(path / "training_manifest.json")
    result = manifest.get("result", {})
    return {
        "name": manifest.get("model", "tiny-gpt-oss"),
        "path": str(path),
        "architecture": (config.get("architectures") or ["?"])[0],
        "config": {k: config.get(k) for k in _CONFIG_KEYS if k in config},
        "parameters": parameters_per_component(shapes),
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": sha256_file(weights),
        "training": {
            "command": manifest.get("command"),
            "seed": manifest.get("settings", {}).get("seed"),
            "steps": result.get("steps"),
            "wall_time_s": result.get("wall_time_s"),
            "tokens": result.get("tokens"),
            "tokens_per_s": result.get("tokens_per_s"),
            "final_train_loss": result.get("final_train_loss"),
            "final_validation_loss": result.get("final_validation_loss"),
            "training_data_sha256": result.get("training_data_sha256"),
            "environment": manifest.get("environment"),
        },
        "scores": read_json(path / SCORES_FILE),
    }
