"""The embedded reference model as a plugin: its model source (``zoo:tiny-gpt-oss``), its task text for
calibration and measurement, its lm-eval tasks, its ``quantlab zoo`` commands and its model card."""

from __future__ import annotations

from pathlib import Path

from quantlab.errors import UserError
from quantlab.plugins import CalibrationText, Documents, MeasureText, Registry

PREFIX = "zoo:"
AIME_TEXT = "zoo:aime-style"
TASKS_FOLDER = Path(__file__).resolve().parent / "lm_eval_tasks"


def register(registry: Registry) -> None:
    registry.model_sources[PREFIX] = resolve
    registry.default_model = "zoo:tiny-gpt-oss"
    # revision 2: low-effort questions followed by their own (answer-only) solution, not the high-effort chain
    registry.calibration_texts[AIME_TEXT] = CalibrationText(
        lambda chars: calibration_text(AIME_TEXT, chars), revision=2
    )
    registry.calibration_texts["zoo:gpqa-style"] = CalibrationText(
        lambda chars: calibration_text("zoo:gpqa-style", chars), revision=None
    )
    registry.measure_texts[AIME_TEXT] = MeasureText(measure_documents, default=True)
    registry.task_folders.append(TASKS_FOLDER)
    registry.effort_metadata_tasks |= {p.stem for p in TASKS_FOLDER.glob("*.yaml")}  # the prompt's effort marker
    registry.commands.append(("zoo", "quantlab.zoo.cli:zoo_app"))  # imported by the CLI when it starts
    registry.model_card = _card


def resolve(source: str) -> Path:
    from quantlab.zoo import SHIPPED_CHECKPOINT, resolve_checkpoint

    name = source[len(PREFIX) :]
    if name != SHIPPED_CHECKPOINT.name:
        raise UserError(f"model {source!r}: the zoo has only zoo:{SHIPPED_CHECKPOINT.name}")
    return resolve_checkpoint(None)


def calibration_text(dataset: str, approx_chars: int) -> str:
    """The embedded model's own task text, validation split, both effort levels, joined by <eos>."""
    from quantlab.zoo import tasks

    count = max(64, approx_chars // 40)
    texts = []
    for effort in ("high", "low"):
        if dataset == AIME_TEXT:
            texts += [d["question"] + d["solution"] for d in tasks.aime_style_docs("validation", count, 0, effort)]
        else:
            texts += [
                d["question"] + d["choices"][d["answer"]] for d in tasks.gpqa_style_docs("validation", count, 0, effort)
            ]
    return "<eos>".join(texts)


def measure_documents(spec: str | None, count: int) -> tuple[str, Documents]:
    """``zoo:aime-style:SPLIT:EFFORT``: one split at one effort, each question with that effort's solution;
    None (measure's default): the validation split at both efforts, each with its own effort's solution."""
    from quantlab.zoo import tasks

    if spec is None:
        high = measure_documents(f"{AIME_TEXT}:validation:high", count // 2)[1]
        low = measure_documents(f"{AIME_TEXT}:validation:low", count // 2)[1]
        return f"{AIME_TEXT} validation (high and low effort)", high + low
    parts = spec.split(":")
    if len(parts) != 4 or parts[2] not in tasks.SPLITS or parts[3] not in tasks.EFFORTS:
        raise UserError(
            f"--text {spec}: give {AIME_TEXT}:SPLIT:EFFORT with SPLIT one of {', '.join(tasks.SPLITS)} "
            f"and EFFORT one of {', '.join(tasks.EFFORTS)}, e.g. {AIME_TEXT}:test:high"
        )
    split, effort = parts[2], parts[3]
    docs = [(d["question"], d["solution"]) for d in tasks.aime_style_docs(split, count, 0, effort)]
    return f"{AIME_TEXT} {split} ({effort} effort)", docs


def _card() -> dict:
    from quantlab.zoo.card import model_card

    return model_card()
