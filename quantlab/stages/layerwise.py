"""Calibration statistics one layer at a time, for the streaming build: never more than one decoder layer in
memory, each layer's Hessians computed, used and freed before the next layer is read.

How: the model's own forward runs once over the calibration tokens with every decoder layer replaced by a
recorder, which keeps what the model hands each layer (the attention mask of its kind, the rotary position
embeddings) and passes the hidden states through. Then layer by layer: the layer is built from its parameters
(in float32, as the in-memory build computes its statistics), the same forward pre-hooks as the in-memory
build's (``StatisticsHooks``) add up each matrix's inputs while the layer runs on the carried hidden states,
and its outputs become the next layer's inputs: the baseline layer's outputs by default, which makes every
statistic the in-memory build's (``tests/test_build_streaming.py``), or with ``calibration.sequential`` the
quantized layer's (the inputs the quantized model will really see).

Memory: a layer's Gram matrices are computed a chunk at a time (``HESSIAN_BYTES``), each chunk by running the
layer again over the carried hidden states. Those runs only need the matrices' inputs, so the float32 copies of
the experts (most of a MoE layer) are dropped after the layer's outputs are computed: the experts module gets
back its stored bfloat16 tensors and skips its forward, and the down projection's inputs are computed one expert
at a time in float32 (``_experts_as_stored``). The build writes the layer's quantized values out of place until
``advance`` (``quantize_entries``), so these runs read the original values even after part of the layer has been
quantized.

The output head's statistics are those of the final norm's outputs, computed the same way; embeddings have no
input activations (data-driven methods fall back to rtn on them, as in the in-memory build).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from quantlab.calibration import calibration_tokens
from quantlab.methods import get_method
from quantlab.methods.activations import StatisticsHooks
from quantlab.models.checkpoint import Checkpoint
from quantlab.plan import Plan
from quantlab.recipe import Recipe

_LAYER = re.compile(r"^layer (\d+)$")
BATCH = 16  # calibration samples per forward, as the in-memory build's pass
HESSIAN_BYTES = 256 * 2**20  # Gram matrices held at once (float64): 4 of gpt-oss's 2880-wide inputs


class _Recorder(torch.nn.Module):
    """Stands in for a decoder layer: keeps the keyword arguments the model gives it, returns its input."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def forward(self, hidden_states, *args, **kwargs):
        self.calls.append(
            {k: v for k, v in kwargs.items() if k in ("attention_mask", "position_embeddings", "position_ids")}
        )
        return hidden_states


class LayerwiseCalibration:
    """The calibration tokens' hidden states carried through the model layer by layer (see the module docstring)."""

    def __init__(self, recipe: Recipe, model, checkpoint: Checkpoint, plan: Plan, folder: Path):
        from transformers import AutoTokenizer

        self.sequential = recipe.calibration is not None and recipe.calibration.sequential
        self.model, self.checkpoint = model, checkpoint
        self.calibrated = {
            e.unit.name
            for e in plan.entries
            if e.method_spec is not None
            and get_method(e.method_spec.name).needs_calibration
            and e.unit.component != "embeddings"
        }
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokens = calibration_tokens(recipe.calibration, tokenizer)
        base = model.model
        self._materialize_norm(base)
        base.rotary_emb = type(base.rotary_emb)(config=model.config)  # its buffers, computed (they were on meta)
        # The embedding rows of the calibration tokens only (a released embedding is 2.3 GB in float32): exactly
        # what the embedding module computes in float32, handed to the model as its input embeddings.
        embedding = self.checkpoint.read(["model.embed_tokens.weight"])["model.embed_tokens.weight"]
        layers = base.layers
        self.calls: list[list[dict]] = [[] for _ in layers]
        base.layers = torch.nn.ModuleList([_Recorder(self.calls[i]) for i in range(len(layers))])
        self.hidden: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], BATCH):
                self.hidden.append(embedding[tokens[start : start + BATCH]].float())
                base(inputs_embeds=self.hidden[-1], use_cache=False)
        del embedding
        # the meta layers, in a list of their own: the ModuleList gets each real layer in turn, and this list is
        # how it gets its meta layer back (the real one, and its float32 copy of the weights, then freed)
        self.layers = list(layers)
        base.layers = layers
        self.next_hidden: list[torch.Tensor] | None = None
        # between ``statistics`` and ``advance``, the layer being quantized shares its experts' stored values with
        # the chunk runs: the build writes its quantized values out of place meanwhile (``quantize_entries``)
        self.reads_originals = False

    def _materialize_norm(self, base) -> None:
        """The final norm in float32 (the output head's input comes out of it)."""
        names = [f"model.norm.{n}" for n, _ in base.norm.named_parameters()]
        for name, value in self.checkpoint.read(names).items():
            _set(base, name.removeprefix("model."), value.float())

    def statistics(self, index: int, label: str, parameters: dict, entries: list):
        """Input statistics of the group's calibrated matrices, as a mapping the build asks matrix by matrix:
        they are computed a few matrices at a time (``HESSIAN_BYTES`` of Gram matrices at most, each chunk's
        freed when the next is computed), by running the layer again over the carried hidden states, so a
        layer of 128 experts never holds 256 Hessians at once."""
        wanted = [e.unit for e in entries if e.unit.name in self.calibrated]
        match = _LAYER.match(label)
        if match is None:
            return self._head_statistics(wanted)
        layer = int(match[1])
        module = self._build_layer(layer, parameters)
        with torch.no_grad():  # the layer's outputs, before its parameters are quantized (the baseline's)
            outputs = [_first(module(hidden, **call)) for hidden, call in zip(self.hidden, self.calls[layer])]
        self.next_hidden = None if self.sequential else outputs
        if not wanted:
            self.model.model.layers[layer] = self.layers[layer]
            return {}
        _experts_as_stored(module, f"model.layers.{layer}.", parameters)
        self.reads_originals = True
        return _ChunkedStatistics(self, layer, module, wanted)

    def _run_layer(self, layer: int, module, units: list) -> dict:
        with StatisticsHooks(self.model, units) as hooks, torch.no_grad():
            for hidden, call in zip(self.hidden, self.calls[layer]):
                module(hidden, **call)
        return hooks.statistics

    def advance(self, index: int, label: str, parameters: dict) -> None:
        """Moves the hidden states past the group just quantized (``parameters`` hold its quantized values)."""
        match = _LAYER.match(label)
        if match is None:
            return
        self.model.model.layers[int(match[1])] = self.layers[int(match[1])]  # the float32 copy is freed
        self.reads_originals = False
        if self.sequential:
            layer = int(match[1])
            module = self._build_layer(layer, parameters)
            with torch.no_grad():
                self.next_hidden = [_first(module(h, **c)) for h, c in zip(self.hidden, self.calls[layer])]
            self.model.model.layers[layer] = self.layers[layer]
        assert self.next_hidden is not None
        self.hidden, self.next_hidden = self.next_hidden, None

    def _build_layer(self, layer: int, parameters: dict):
        """The real decoder layer ``layer`` from ``parameters`` in float32 (converted copies; a float32 value is
        shared, which is safe because the build never writes into a tensor this layer reads), placed in the model."""
        prefix = f"model.layers.{layer}."
        real = copy.deepcopy(self.layers[layer])  # the meta structure: no memory until each parameter is set
        for name, value in parameters.items():
            if name.startswith(prefix):
                _set(real, name.removeprefix(prefix), value.detach().float())
        self.model.model.layers[layer] = real
        return real

    def _head_statistics(self, wanted: list) -> dict:
        """The output head's statistics: its input is the final norm's output (no hooks needed)."""
        hooks = StatisticsHooks(self.model, wanted)
        with torch.no_grad():
            for hidden in self.hidden:
                normed = self.model.model.norm(hidden)
                for unit in wanted:
                    hooks.add(unit.name, normed)
        return hooks.statistics


class _ChunkedStatistics:
    """``get(unit name)``: the unit's statistics, computing the chunk of units it belongs to when first asked."""

    def __init__(self, owner: LayerwiseCalibration, layer: int, module, units: list):
        self.owner, self.layer, self.module = owner, layer, module
        self.chunks: list[list] = [[]]
        size = 0
        for unit in units:  # consecutive units (the build's order) up to HESSIAN_BYTES of float64 Gram matrices
            gram = 8 * unit.shape[1] ** 2
            if self.chunks[-1] and size + gram > HESSIAN_BYTES:
                self.chunks.append([])
                size = 0
            self.chunks[-1].append(unit)
            size += gram
        self.chunk_of = {u.name: i for i, chunk in enumerate(self.chunks) for u in chunk}
        self.current = -1
        self.values: dict = {}

    def get(self, name: str):
        index = self.chunk_of.get(name)
        if index is None:
            return None
        if index != self.current:
            self.values = {}  # the previous chunk's Hessians, freed before the next are computed
            self.values = self.owner._run_layer(self.layer, self.module, self.chunks[index])
            self.current = index
        return self.values.get(name)


def _experts_as_stored(layer: torch.nn.Module, prefix: str, parameters: dict) -> None:
    """Readies a layer whose outputs are computed for its chunk runs, which only need its matrices' inputs: each
    experts module (most of a MoE layer) gets back its stored values (bfloat16: half its float32 copy's memory,
    shared with the build's ``parameters``), and its forward returns zeros. The statistics hook runs before
    that forward and computes what it needs in float32 one expert at a time (``expert_intermediate``); what the
    experts would return only feeds the layer's outputs, already computed."""
    for name, module in layer.named_modules():
        if not hasattr(module, "gate_up_proj"):
            continue
        for attribute, _ in list(module.named_parameters(recurse=False)):
            _set(module, attribute, parameters[f"{prefix}{name}.{attribute}"].detach())
        module.forward = _no_experts_output


def _no_experts_output(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return torch.zeros_like(hidden_states)  # an experts module's output has its input's shape (transformers 5)


def _set(root: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attribute = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    setattr(module, attribute, torch.nn.Parameter(value, requires_grad=False))


def _first(output):
    return output[0] if isinstance(output, tuple) else output
