"""The embedded reference model as a plugin: its model source (``zoo:tiny-gpt-oss``), its task text for
calibration and measurement, its lm-eval tasks, its ``quantlab zoo`` commands and its model card."""

from __future__ import annotations

from pathlib import Path

from quantlab.errors import UserError
from quantlab.plugins import CalibrationText, Document, Documents, MeasureText, Probe, Registry, ToolUse
from quantlab.zoo import SHIPPED_CHECKPOINT, resolve_checkpoint, tasks

PREFIX = "zoo:"
AIME_TEXT = "zoo:aime-style"
TASKS_FOLDER = Path(__file__).resolve().parent / "lm_eval_tasks"


CORPUS_TEXT = "zoo:chat-corpus"


def register(registry: Registry) -> None:
    registry.model_sources[PREFIX] = resolve
    registry.default_model = "zoo:tiny-gpt-oss"
    # revision 3: conversations in the chat format at three efforts (the chat model's own text)
    registry.calibration_texts[AIME_TEXT] = CalibrationText(
        lambda chars: calibration_text(AIME_TEXT, chars), revision=3
    )
    registry.calibration_texts["zoo:gpqa-style"] = CalibrationText(
        lambda chars: calibration_text("zoo:gpqa-style", chars), revision=3
    )
    registry.measure_texts[AIME_TEXT] = MeasureText(measure_documents, default=True)
    registry.measure_texts[CORPUS_TEXT] = MeasureText(corpus_documents)
    registry.task_folders.append(TASKS_FOLDER)
    registry.commands.append(("zoo", "quantlab.zoo.cli:zoo_group"))  # loaded by the CLI at every start
    registry.model_card = _card
    registry.audit_probes = audit_probes
    registry.audit_tools = ToolUse([tasks.CALCULATOR_TOOL], calculator)


def resolve(source: str) -> Path:
    name = source[len(PREFIX) :]
    if name != SHIPPED_CHECKPOINT.name:
        raise UserError(f"model {source!r}: the zoo has only zoo:{SHIPPED_CHECKPOINT.name}")
    return resolve_checkpoint(None)


def calibration_text(dataset: str, approx_chars: int) -> str:
    """The embedded model's own conversations, validation split, one after another as in training: AIME-style at
    each effort in turn, or GPQA-style (the question with its right worked answer, high effort)."""
    count = max(64, approx_chars // 150)
    problems = tasks.problems("validation", count)
    if dataset == AIME_TEXT:
        return "".join(tasks.conversation_text(p, tasks.EFFORTS[i % 3]) for i, p in enumerate(problems))
    docs = tasks.gpqa_style_docs("validation", count)
    return "".join(
        tasks.prompt_text(p, "high") + d["choices"][d["answer"]] for p, d in zip(problems, docs, strict=True)
    )


def measure_documents(spec: str | None, count: int) -> tuple[str, Documents]:
    """``zoo:aime-style:SPLIT:EFFORT``: one conversation per row at that effort, its final answer the answer part
    and its chain the analysis part; None (measure's default): the validation split at each effort in turn."""
    if spec is None:
        problems = tasks.problems("validation", count)
        return f"{AIME_TEXT} validation (low, medium and high effort)", [
            Document(tasks.conversation_parts(p, tasks.EFFORTS[i % 3])) for i, p in enumerate(problems)
        ]
    parts = spec.split(":")
    if len(parts) != 4 or parts[2] not in tasks.SPLITS or parts[3] not in tasks.EFFORTS:
        raise UserError(
            f"--text {spec}: give {AIME_TEXT}:SPLIT:EFFORT with SPLIT one of {', '.join(tasks.SPLITS)} "
            f"and EFFORT one of {', '.join(tasks.EFFORTS)}, e.g. {AIME_TEXT}:test:high"
        )
    split, effort = parts[2], parts[3]
    docs = [Document(tasks.conversation_parts(p, effort)) for p in tasks.problems(split, count, 0)]
    return f"{AIME_TEXT} {split} ({effort} effort)", docs


def corpus_documents(spec: str | None, count: int) -> tuple[str, Documents]:
    """``zoo:chat-corpus:SPLIT``: conversations at each effort in turn, packed one after another with no answer
    part, so that measure reads them as a corpus (consecutive windows), as llama-perplexity reads a text."""
    parts = (spec or "").split(":")
    if len(parts) != 3 or parts[2] not in tasks.SPLITS:
        raise UserError(f"--text {spec}: give {CORPUS_TEXT}:SPLIT with SPLIT one of {', '.join(tasks.SPLITS)}")
    problems = tasks.problems(parts[2], count, 0)
    docs = [Document.of(tasks.conversation_text(p, tasks.EFFORTS[i % 3])) for i, p in enumerate(problems)]
    return f"{CORPUS_TEXT} {parts[2]} (packed conversations, low/medium/high effort)", docs


def audit_probes(count: int, seed: int) -> list[Probe]:
    """``count`` AIME-style test problems (drawn with ``seed``) as audit questions: the expression, its value."""
    return [Probe(p.expression, str(p.answer)) for p in tasks.problems("test", count, seed)]


def calculator(name: str, arguments: dict) -> str:
    """The calculator tool's answer to a call: the expression's value."""
    if name != tasks.CALCULATOR:
        raise ValueError(f"no tool {name!r}")
    return str(tasks.calculate(arguments.get("expression")))


def _card() -> dict:
    # on use: the card loads the model (torch, transformers); the registry is built at every start
    from quantlab.zoo.card import model_card

    return model_card()
