"""The weight matrices of a model, one per expert, in the (out, in) orientation every format quantizes.

transformers 5 keeps MoE experts fused in memory as 3-D parameters (one slice per expert) whatever their layout
on disk. Their orientation differs by architecture: gpt-oss stores ``(experts, in, out)`` (its ``gate_up_proj``
columns interleave gate and up), Mixtral, Qwen3-MoE and OLMoE store ``(experts, out, in)``. A dense model's MLP
(Llama, and dense layers of Qwen3-MoE) counts as experts with a single expert, id 0, so that the same recipes
and measurements apply to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from quantlab.errors import UserError
from quantlab.models import component_of

ARCHITECTURES = {  # model_type -> whether fused expert tensors are stored (experts, in, out)
    "gpt_oss": True,
    "qwen3_moe": False,
    "mixtral": False,
    "olmoe": False,
    "llama": False,
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_DENSE_MLP = re.compile(r"\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")


@dataclass(frozen=True)
class WeightUnit:
    """One matrix a format quantizes: a 2-D parameter, one expert's slice of a fused 3-D one, or a norm vector."""

    name: str  # the tensor name, with [e] for an expert slice: "model.layers.0.mlp.experts.down_proj[3]"
    tensor: str  # the parameter's name in the model
    component: str
    layer: int | None
    expert: int | None
    shape: tuple[int, int]  # (out, in), as quantized
    transposed: bool = False  # the parameter stores this matrix as (in, out)

    def read(self, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        """This unit's matrix (out, in) as float32: a view of the parameter when it is float32 already (a later
        ``write`` changes it), a copy otherwise."""
        value = parameters[self.tensor].detach()
        if self.expert is not None and value.dim() == 3:
            value = value[self.expert]
        if value.dim() == 1:
            value = value.unsqueeze(0)
        return (value.T if self.transposed else value).float()

    def write(self, parameters: dict[str, torch.Tensor], matrix: torch.Tensor) -> None:
        """Puts ``matrix`` (out, in) back where ``read`` found it (the parameter must already have the dtype)."""
        target = parameters[self.tensor].detach()
        value = (matrix.T if self.transposed else matrix).to(target.dtype)
        if self.expert is not None and target.dim() == 3:
            target[self.expert] = value
        else:
            target.copy_(value.reshape(target.shape))


def architecture(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
            "(a dense model with Llama's layout works as 'llama')"
        )
    return model_type


def weight_units(model) -> list[WeightUnit]:
    """Every matrix of ``model`` a recipe can select, in parameter order (experts by id within a tensor)."""
    transposed_experts = ARCHITECTURES[architecture(model.config)]
    units = []
    for name, parameter in model.named_parameters():
        component = component_of(name)
        if component == "other" and _DENSE_MLP.search(name):
            component = "experts"
        layer_match = _LAYER.search(name)
        layer = int(layer_match[1]) if layer_match else None
        if name.endswith(("bias", "_bias")) or name.endswith(".sinks"):
            continue  # biases and attention sinks stay as they are, as in every quantized format
        if parameter.dim() == 3 and component in ("experts", "shared_experts"):
            _, rows, cols = parameter.shape
            shape = (cols, rows) if transposed_experts else (rows, cols)
            units += [
                WeightUnit(f"{name}[{e}]", name, component, layer, e, shape, transposed_experts)
                for e in range(parameter.shape[0])
            ]
        elif parameter.dim() == 2:
            expert = 0 if component == "experts" else None  # a dense MLP: the one expert
            units.append(WeightUnit(name, name, component, layer, expert, tuple(parameter.shape)))
        elif parameter.dim() == 1 and component == "norms":
            units.append(WeightUnit(name, name, component, layer, None, (1, parameter.shape[0])))
    return units
