"""Plugins: what a model family brings to the lab besides its weights (model sources, texts, tasks, commands),
registered here so that the core never names it.

A plugin is a ``register(registry)`` function, found through the ``quantlab.plugins`` entry-point group or
listed in ``BUILTIN`` (the embedded reference model ships as one). Each entry is looked up by what a user
typed: a model source by its prefix (``zoo:``), a calibration or measurement text by its name, a task by its
lm-eval name.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BUILTIN = ("quantlab.zoo.plugin:register",)  # the embedded reference model

CONTEXT, ANALYSIS, ANSWER = "context", "analysis", "answer"  # the roles of a measurement document's parts


@dataclass(frozen=True)
class Document:
    """One row of a measurement text: its parts in order, each with a role. ``answer`` parts are what the answer
    statistics cover (on a chat model, the final channel's answer); ``analysis`` parts are the model's worked
    reasoning, reported on their own; everything else is ``context`` (prompts, chat scaffolding)."""

    parts: tuple[tuple[str, str], ...]  # (role, text)

    @classmethod
    def of(cls, context: str, answer: str = "") -> Document:
        return cls(((CONTEXT, context),) + (((ANSWER, answer),) if answer else ()))

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.parts)

    @property
    def has_answer(self) -> bool:
        return any(role == ANSWER and text for role, text in self.parts)


Documents = list[Document]  # a measurement text's rows


@dataclass(frozen=True)
class CalibrationText:
    text: Callable[[int], str]  # about this many characters -> the text
    revision: int | None = None  # raised when the text changes, so that calibrated variants get a new cache key


@dataclass(frozen=True)
class MeasureText:
    documents: Callable[
        [str | None, int], tuple[str, Documents]
    ]  # (the spec, None for the default; rows) -> (name, rows)
    default: bool = False  # measure's text when none is given


@dataclass(frozen=True)
class Probe:
    """A question ``quantlab audit`` asks an endpoint: the user's message and the final answer a correct turn
    gives (compared as text, stripped)."""

    question: str
    answer: str

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.question}]


@dataclass(frozen=True)
class ToolUse:
    """Function tools the default model was trained to call, for ``quantlab audit``'s tool-call check: the tools
    (OpenAI's function-tool objects) and ``execute(name, arguments)``, the result's text as the tool answers a
    call (``ValueError``: arguments the tool cannot take). A correct call is one whose result is the probe's
    answer."""

    tools: list[dict]
    execute: Callable[[str, dict], str]


@dataclass
class Registry:
    model_sources: dict[str, Callable[[str], Path]] = field(default_factory=dict)  # prefix -> resolver
    calibration_texts: dict[str, CalibrationText] = field(default_factory=dict)
    measure_texts: dict[str, MeasureText] = field(default_factory=dict)  # prefix of the spec -> text
    task_folders: list[Path] = field(default_factory=list)  # lm-eval YAML folders (their data ships with them)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (name, "module:typer app") added to the CLI
    default_model: str | None = None  # what a command runs when given no model
    model_card: Callable[[], dict] | None = None  # the default model's card (printed by the demo)
    audit_probes: Callable[[int, int], list[Probe]] | None = None  # (count, seed) -> questions with known answers
    audit_tools: ToolUse | None = None  # the tools the default model calls, for the audit's tool-call check

    def model_source(self, source: str) -> Callable[[str], Path] | None:
        return next((resolve for prefix, resolve in self.model_sources.items() if source.startswith(prefix)), None)

    def measure_text(self, spec: str | None) -> MeasureText | None:
        if spec is None:
            return next((t for t in self.measure_texts.values() if t.default), None)
        return next(
            (t for prefix, t in self.measure_texts.items() if spec == prefix or spec.startswith(prefix + ":")), None
        )


@functools.cache
def registry() -> Registry:
    """The registry, every plugin registered (once per process)."""
    found = Registry()
    targets = list(BUILTIN) + [
        entry.value for entry in metadata.entry_points(group="quantlab.plugins") if entry.value not in BUILTIN
    ]
    for target in targets:
        load(target)(found)
    return found


def load(target: str) -> Any:
    """The object a ``module:name`` string names (imported on demand, so that registering stays cheap)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
