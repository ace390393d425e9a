"""What an evaluation is asked: one frozen record, the cache key's input, stored as the record's ``settings``.

``EvaluationSettings`` holds the task's side (which task, items, repeats, seeds, data files, generation) and a
``RuntimeSettings`` (which runtime, sampling, template, effort, engine). What a run works out for itself (lm-eval's
generation length where the task gives none, a length clamped to the model) is a ``GenerationLimits``, stored
beside the settings and never written into them, so the settings a Ray worker sees are the ones the key was taken
from and the ones stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quantlab.runtimes.settings import RuntimeSettings


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything that decides an evaluation's answers, but the subject."""

    task: str
    limit: int | None = None
    repeats: int = 1  # 1 when greedy: greedy decoding is deterministic
    max_new_tokens: int | None = None
    num_fewshot: int | None = None
    seed: int = 0
    data_files: Mapping[str, str] | None = None  # {split: path} of local task data
    data_sha256: Mapping[str, str] | None = None  # {split: hash} of those files
    generation: Mapping[str, Any] | None = None  # task-specific generation settings (``--gen``), sorted
    task_metadata: Mapping[str, Any] | None = None  # lm-eval's ``--metadata``, sorted
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def record(self) -> dict[str, Any]:
        """The settings as stored and hashed: one flat mapping (the layout every stored evaluation has)."""
        runtime = self.runtime.record()
        out: dict[str, Any] = {
            "task": self.task,
            "backend": runtime.pop("backend"),
            "limit": self.limit,
            "repeats": self.repeats,
            "temperature": runtime.pop("temperature"),
            "top_p": runtime.pop("top_p"),
            "max_new_tokens": self.max_new_tokens,
            "num_fewshot": self.num_fewshot,
            "seed": self.seed,
            "data_files": _plain(self.data_files),
            "data_sha256": _plain(self.data_sha256),
            "generation": _plain(self.generation),
        }
        # the runtime's rest, with lm-eval's metadata where the stored records have always had it
        for name in ("chat_template", "chat_template_sha256", "reasoning_effort"):
            if name in runtime:
                out[name] = runtime.pop(name)
        if self.task_metadata:
            out["task_metadata"] = dict(self.task_metadata)
        return out | runtime


@dataclass(frozen=True)
class GenerationLimits:
    """The generation length a run chose where the request left it open: recorded beside the settings."""

    default: int | None = None  # the task gave no length: half the context (not lm-eval's silent 256)
    requested: int | None = None  # the task asked for more than the model holds ...
    used: int | None = None  # ... and got half the context
    context: int | None = None

    def record(self) -> dict[str, Any]:
        """The stored form: ``max_gen_toks_default`` and/or ``max_gen_toks_clamped``, as the record has them."""
        out: dict[str, Any] = {}
        if self.default is not None:
            out["max_gen_toks_default"] = self.default
        if self.requested is not None:
            out["max_gen_toks_clamped"] = {"requested": self.requested, "used": self.used, "context": self.context}
        return out


def _plain(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(mapping) if mapping else None
