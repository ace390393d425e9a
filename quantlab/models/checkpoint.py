"""A Hugging Face checkpoint read a few tensors at a time, in the layout the model holds them in memory.

The streaming build (``quantlab.stages.build_streaming``) never loads a whole model: it asks for one layer's
parameters at a time, by their in-memory names (what ``weight_units`` and the plan use), and this module reads
them from the shards (memory-mapped by safetensors, each shard closed again after the layer) and converts the
hub's on-disk layout as transformers 5 does when it loads:

- Mixtral's ``block_sparse_moe.experts.E.w1 / w3 / w2`` and Qwen3-MoE's / OLMoE's ``mlp.experts.E.gate_proj /
  up_proj / down_proj`` become the fused ``mlp.experts.gate_up_proj`` (experts, 2 x intermediate, hidden; gate
  rows first) and ``mlp.experts.down_proj``; Mixtral's ``block_sparse_moe.gate`` becomes ``mlp.gate``;
- gpt-oss's released MXFP4 ``*_blocks`` / ``*_scales`` are dequantized by transformers' own
  ``convert_moe_packed_tensors`` (the function its loader calls), giving the very values ``load_model`` holds.

``tests/test_build_streaming.py`` checks every family against ``load_model``.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import torch

from quantlab.errors import UserError

_INDEX = "model.safetensors.index.json"
_FUSED = re.compile(r"^(model\.layers\.\d+\.)mlp\.experts\.(gate_up_proj|down_proj)$")
PER_EXPERT_LAYOUT = {  # model_type -> (MoE block prefix on disk, gate name, up name, down name), as the hub stores it
    "mixtral": ("block_sparse_moe.", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp.", "gate_proj", "up_proj", "down_proj"),
    "olmoe": ("mlp.", "gate_proj", "up_proj", "down_proj"),
}


class Checkpoint:
    """The tensors of a checkpoint folder (one ``model.safetensors`` or shards with an index), read on demand."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.config = json.loads((self.folder / "config.json").read_text())
        index = self.folder / _INDEX
        if index.is_file():
            self.files = json.loads(index.read_text())["weight_map"]
        else:
            from safetensors import safe_open

            self.files = {}
            for path in sorted(self.folder.glob("*.safetensors")):
                with safe_open(path, "pt") as f:
                    self.files |= dict.fromkeys(f.keys(), path.name)
        self.model_type = self.config.get("model_type")

    def bytes_on_disk(self) -> int:
        return sum((self.folder / name).stat().st_size for name in set(self.files.values()))

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The in-memory parameters ``names``, converted from the on-disk layout (``dtype``: cast floats to it)."""
        with ExitStack() as stack:
            opened: dict[str, object] = {}

            def tensor(disk_name: str) -> torch.Tensor:
                file = self.files.get(disk_name)
                if file is None:
                    raise UserError(
                        f"{self.folder}: the checkpoint has no tensor {disk_name}; re-download or re-export it"
                    )
                if file not in opened:
                    from safetensors import safe_open

                    opened[file] = stack.enter_context(safe_open(self.folder / file, "pt"))
                return opened[file].get_tensor(disk_name)  # type: ignore[attr-defined]

            out = {}
            for name in names:
                value = self._parameter(name, tensor)
                out[name] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
            return out

    def _parameter(self, name: str, tensor) -> torch.Tensor:
        fused = _FUSED.match(name)
        if name in self.files or not fused:
            return _renamed(self, name, tensor)
        layer, which = fused[1], fused[2]
        if self.model_type == "gpt_oss":  # the release's MXFP4: transformers' own dequantization, (E, in, out)
            from transformers.integrations.mxfp4 import convert_moe_packed_tensors

            blocks, scales = tensor(f"{layer}mlp.experts.{which}_blocks"), tensor(f"{layer}mlp.experts.{which}_scales")
            experts, rows, groups = scales.shape
            out = torch.empty(experts, groups * 32, rows, dtype=torch.bfloat16)  # (experts, in, out), contiguous
            for e in range(experts):  # one expert at a time: the lookup's temporaries stay one expert's size
                out[e] = convert_moe_packed_tensors(blocks[e : e + 1], scales[e : e + 1], dtype=torch.bfloat16)[0]
            return out
        if self.model_type not in PER_EXPERT_LAYOUT:
            raise UserError(f"{self.folder}: streaming does not know {self.model_type!r}'s on-disk expert layout")
        block, gate, up, down = PER_EXPERT_LAYOUT[self.model_type]
        experts = self.config.get("num_local_experts") or self.config["num_experts"]
        prefix = f"{layer}{block}experts."
        if which == "down_proj":
            return torch.stack([tensor(f"{prefix}{e}.{down}.weight") for e in range(experts)])
        return torch.stack(
            [
                torch.cat([tensor(f"{prefix}{e}.{gate}.weight"), tensor(f"{prefix}{e}.{up}.weight")])
                for e in range(experts)
            ]
        )


def _renamed(checkpoint: Checkpoint, name: str, tensor) -> torch.Tensor:
    """A parameter stored under its own name, or under Mixtral's ``block_sparse_moe`` for its router."""
    if name in checkpoint.files:
        return tensor(name)
    if checkpoint.model_type == "mixtral" and ".mlp.gate." in name:
        return tensor(name.replace(".mlp.gate.", ".block_sparse_moe.gate."))
    return tensor(name)  # raises the one-line error naming the tensor
