"""The model a measurement compares a variant against."""

from __future__ import annotations

import torch

from quantlab.models.loading import load_model, resolve_model
from quantlab.store import MODEL, ArtifactStore


def load_baseline(store: ArtifactStore, manifest: dict, baseline_ref: str | None):
    """(the baseline model in float32, its name): the variant's source model, or another built variant."""
    if baseline_ref is None:
        name = manifest["model"]["source"]
        model, _ = load_model(resolve_model(name), dtype=torch.float32)
        return model, name
    folder = store.variant(baseline_ref)
    model, _ = load_model(folder / MODEL, dtype=torch.float32)
    return model, folder.name
