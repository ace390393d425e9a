"""Where things live in a Hugging Face MoE checkpoint: each tensor name mapped to the model component it is."""

from __future__ import annotations

import re

COMPONENTS = ("experts", "shared_experts", "router", "attention", "embeddings", "lm_head", "norms")

# Order matters: the first pattern that matches a tensor name decides its component.
_COMPONENT_PATTERNS = (
    ("shared_experts", re.compile(r"\.shared_experts?\.|\.shared_expert_gate\.")),
    ("experts", re.compile(r"\.experts\.")),
    ("router", re.compile(r"\.(router|gate)\.(weight|bias)$")),
    ("attention", re.compile(r"\.(self_attn|attention|attn)\.")),
    ("embeddings", re.compile(r"(^|\.)(embed_tokens|wte|tok_embeddings)\.")),
    ("lm_head", re.compile(r"(^|\.)(lm_head|output)\.")),
    ("norms", re.compile(r"norm[^.]*\.(weight|bias)$")),
)


def component_of(tensor_name: str) -> str:
    """The component (one of ``COMPONENTS``) a tensor belongs to, from its name; ``other`` if none fits."""
    for component, pattern in _COMPONENT_PATTERNS:
        if pattern.search(tensor_name):
            return component
    return "other"


def parameters_per_component(named_parameters) -> dict[str, int]:
    """Parameter counts per component, in ``COMPONENTS`` order, with ``total`` last."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, tensor in named_parameters:
        component = component_of(name)
        counts[component] = counts.get(component, 0) + tensor.numel()
    counts = {k: v for k, v in counts.items() if v or k in ("experts", "router", "attention", "embeddings")}
    counts["total"] = sum(counts.values())
    return counts
