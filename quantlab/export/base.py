"""The exports' registry: each export (a file format an engine loads) registers itself by subclassing ``Export``,
and the build writes the ones a recipe lists through it, by what each can do rather than by its name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from quantlab.registry import Registered


class Export(Registered):
    kind: ClassVar[str] = "export"
    _entries: ClassVar[dict[str, Registered]] = {}
    path: ClassVar[str]  # where it lies in the variant's folder (a file or a folder)
    streams: ClassVar[bool] = True  # written from the streamed build's shards, one tensor or layer at a time
    # A file llama.cpp runs: the build compares its logits with the variant's, and attribution can run it as the
    # runtime factor.
    runs_in_llama_cpp: ClassVar[bool] = False

    def write(self, model, tokenizer, packed_by_unit: dict, folder: Path) -> dict:
        """Writes the export of the variant ``model`` under the variant's ``folder``; returns its manifest record."""
        raise NotImplementedError

    def write_streamed(
        self,
        config,
        tokenizer,
        parameter: Callable[[str], torch.Tensor],
        packed_by_unit: Any,
        groups: list[list[str]],
        folder: Path,
    ) -> dict:
        """The same export from a streamed build's shards: ``parameter(name)`` reads one parameter, ``groups`` are
        the shards' parameter names (one layer each)."""
        raise NotImplementedError(f"the {self.name} export is not written from a streamed build")


def get_export(name: str) -> Export:
    """The export a recipe's ``exports`` names; a one-line error listing the known ones otherwise."""
    return Export.lookup(name)
