"""Input statistics of weight matrices on calibration tokens, per expert for MoE layers.

For every selected unit: the sum of x xᵀ over the inputs x the matrix multiplies (its Hessian for GPTQ, whose
diagonal is llama.cpp's importance matrix) and how many tokens it saw. An expert sees only the tokens the
router sends it (those whose top-k includes it), so a rarely chosen expert can see few or none: the methods
fall back to rtn below a minimum and say so per expert.

Statistics come from the baseline model in one pass by default (the streaming build computes the same ones
layer by layer, ``quantlab.stages.layerwise``, and there ``calibration.sequential`` feeds each layer the
quantized layers' outputs instead, as GPTQ's "true sequential" mode does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantlab.models.units import WeightUnit


@dataclass
class InputStatistics:
    gram: torch.Tensor  # Σ x xᵀ, (in, in), float64
    tokens: int

    @property
    def importance(self) -> torch.Tensor:
        """Mean squared input per column: llama.cpp's imatrix for this matrix."""
        return (self.gram.diagonal() / max(self.tokens, 1)).float()


def activate(experts, gate_up: torch.Tensor) -> torch.Tensor:
    """The down projection's input from the gate_up projection's output, by the experts module's own functions:
    gpt-oss's clamped SwiGLU on interleaved gate/up, else act(gate) * up on the two halves."""
    if hasattr(experts, "_apply_gate"):
        return experts._apply_gate(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def expert_intermediate(experts, expert: int, x: torch.Tensor) -> torch.Tensor:
    """The input of expert ``expert``'s down projection for its inputs ``x``, computed in ``x``'s dtype (the
    streaming build's statistics keep the experts in their stored bfloat16 and convert one expert at a time:
    exact, and the same products as a float32 model's)."""
    weight = experts.gate_up_proj[expert].to(x.dtype)
    if hasattr(experts, "gate_up_proj_bias"):  # gpt-oss: (experts, in, out) weights and biases
        return activate(experts, x @ weight + experts.gate_up_proj_bias[expert].to(x.dtype))
    return activate(experts, torch.nn.functional.linear(x, weight))


def collect_input_statistics(
    model, units: list[WeightUnit], tokens: torch.Tensor, batch_size: int = 16
) -> dict[str, InputStatistics]:
    """Unit name -> input statistics of that matrix over ``tokens`` (samples, length), from one pass."""
    with StatisticsHooks(model, units) as hooks, torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            model(tokens[start : start + batch_size])
    return hooks.statistics


class StatisticsHooks:
    """Forward pre-hooks on the modules of ``units`` that add up each unit's input statistics while the block
    runs; ``statistics`` then holds every unit (a unit that saw no token: zeros, 0 tokens)."""

    def __init__(self, model, units: list[WeightUnit]):
        self.model, self.units = model, units
        self.statistics: dict[str, InputStatistics] = {}
        self.handles: list = []

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        entry = self.statistics.get(name)
        gram = x.T @ x
        if entry is None:
            self.statistics[name] = InputStatistics(gram, x.shape[0])
        else:
            entry.gram += gram
            entry.tokens += x.shape[0]

    def __enter__(self) -> StatisticsHooks:
        by_module: dict[str, list[WeightUnit]] = {}
        for unit in self.units:
            by_module.setdefault(unit.tensor.rsplit(".", 1)[0], []).append(unit)
        for module_name, module_units in by_module.items():
            module = self.model.get_submodule(module_name)
            fused = [u for u in module_units if u.expert is not None and u.tensor != u.name]
            hook = _experts_hook(module, fused, self.add) if fused else _linear_hook(module_units, self.add)
            self.handles.append(module.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        for unit in self.units:  # units that never saw a token (an expert no token was routed to)
            self.statistics.setdefault(
                unit.name, InputStatistics(torch.zeros(unit.shape[1], unit.shape[1], dtype=torch.float64), 0)
            )


def _linear_hook(units: list[WeightUnit], add):
    def hook(module, args):  # returns None: a pre-hook's return value would replace the module's inputs
        for unit in units:
            add(unit.name, args[0])

    return hook


def _experts_hook(experts, units: list[WeightUnit], add):
    wanted = {(u.tensor.rsplit(".", 1)[1], u.expert): u.name for u in units}

    def hook(module, args):
        hidden, indices = args[0], args[1]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        for expert in range(module.gate_up_proj.shape[0]):
            rows = (indices == expert).any(dim=-1).nonzero().flatten()
            if ("gate_up_proj", expert) in wanted:
                add(wanted[("gate_up_proj", expert)], hidden[rows])
            if ("down_proj", expert) in wanted:
                add(wanted[("down_proj", expert)], expert_intermediate(module, expert, hidden[rows]))

    return hook
