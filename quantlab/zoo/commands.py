"""The ``quantlab zoo`` commands (train, score, info, synth); ``quantlab.zoo.cli`` lists them for the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from quantlab.cli import render
from quantlab.cli.render import console
from quantlab.errors import UserError
from quantlab.stages.synthetic import parse_size, synth_config, synthesize
from quantlab.store import check_output_directory
from quantlab.zoo import load_reference_model, resolve_checkpoint
from quantlab.zoo.card import model_card
from quantlab.zoo.scoring import record_scores, score_reference_tasks
from quantlab.zoo.settings import DEFAULT_MINUTES, TrainSettings
from quantlab.zoo.train import train


def zoo_train(
    out: Path = typer.Option(Path("artifacts/zoo/tiny-gpt-oss"), help="Checkpoint directory to write."),
    seed: int = typer.Option(0, help="Seed of the data stream, tokenizer and initial weights."),
    minutes: Optional[float] = typer.Option(
        None, help=f"Time budget (default {DEFAULT_MINUTES:g} min); the step count it gives is recorded."
    ),
    steps: Optional[int] = typer.Option(None, help="Exact step count (reproducible bytes)."),
    batch_size: int = typer.Option(TrainSettings.batch_size, help="Packed rows per optimizer step."),
    row_tokens: int = typer.Option(TrainSettings.row_tokens, help="Tokens per packed row (at most the context)."),
    learning_rate: float = typer.Option(
        TrainSettings.learning_rate, help="Peak learning rate (linear warm-up, cosine decay to 5%)."
    ),
    warmup_steps: int = typer.Option(TrainSettings.warmup_steps, help="Linear warm-up steps."),
    low_effort_fraction: float = typer.Option(
        TrainSettings.low_effort_fraction, help="Share of training conversations at low reasoning effort."
    ),
    medium_effort_fraction: float = typer.Option(
        TrainSettings.medium_effort_fraction, help="Share at medium effort (high takes the rest)."
    ),
    tool_fraction: float = typer.Option(
        TrainSettings.tool_fraction, help="Share of training conversations that call the calculator tool."
    ),
    score_items: int = typer.Option(500, help="Test items per task scored after training (0: skip)."),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Train tiny-gpt-oss from scratch on the synthetic tasks."""
    if minutes is not None and steps is not None:
        raise UserError("quantlab zoo train: give --minutes or --steps, not both")
    if steps is not None and steps < 1 or minutes is not None and minutes <= 0:
        raise UserError("quantlab zoo train: --steps and --minutes must be positive")
    if batch_size < 1 or learning_rate <= 0 or warmup_steps < 1 or not 16 <= row_tokens <= 256:
        raise UserError(
            "quantlab zoo train: --batch-size, --learning-rate and --warmup-steps must be positive, "
            "--row-tokens within [16, 256] (the model's context)"
        )
    if min(low_effort_fraction, medium_effort_fraction) < 0 or low_effort_fraction + medium_effort_fraction > 1:
        raise UserError(
            "quantlab zoo train: --low-effort-fraction and --medium-effort-fraction must be non-negative "
            "and sum to at most 1"
        )
    if not 0 <= tool_fraction <= 1:
        raise UserError("quantlab zoo train: --tool-fraction must be within [0, 1]")
    check_output_directory(out, force)  # fail before training, not after

    settings = TrainSettings(
        seed=seed,
        steps=steps,
        minutes=None if steps is not None else (minutes or DEFAULT_MINUTES),
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        row_tokens=row_tokens,
        low_effort_fraction=low_effort_fraction,
        medium_effort_fraction=medium_effort_fraction,
        tool_fraction=tool_fraction,
    )
    result = train(out, settings, log=console.print, force=force, score_items=score_items)
    console.print(f"wrote {out}: {result.steps} steps, {result.wall_time_s:.0f} s, {result.tokens_per_s} tokens/s")


def zoo_score(
    model: Optional[Path] = typer.Option(None, help="Checkpoint directory (default: the shipped one)."),
    count: int = typer.Option(500, help="Test items per task."),
    seed: int = typer.Option(0, help="Seed of the task generator."),
    record: bool = typer.Option(False, help="Save the scores into the checkpoint's scores.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Greedy AIME-style exact match and GPQA-style accuracy on the test split: one row per task, reasoning
    effort and chat template (the model's own, and the wrong renderings a host makes)."""

    if count < 1:
        raise UserError("quantlab zoo score: --count must be at least 1")
    path = resolve_checkpoint(model)
    net, tokenizer = load_reference_model(path)
    with render.status(f"scoring {count} items per task", as_json):
        scores = score_reference_tasks(net, tokenizer, count=count, seed=seed)
    if record:
        record_scores(path, scores)
    render.print_json(scores["rows"]) if as_json else render.reference_scores(scores)


def zoo_info(
    model: Optional[Path] = typer.Option(None, help="Checkpoint directory (default: the shipped one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Print the model card: config, parameters per component, training record and scores."""
    card = model_card(model)
    render.print_json(card) if as_json else render.model_card(card)


def zoo_synth(
    family: str = typer.Argument(
        ..., help="A released configuration: gpt-oss-20b, gpt-oss-120b, qwen3-30b-a3b, mixtral-8x7b, olmoe-1b-7b."
    ),
    out: Path = typer.Option(..., help="Checkpoint directory to write."),
    layers: int = typer.Option(..., help="Layers to keep (the released count is recorded in the config)."),
    experts: Optional[int] = typer.Option(None, help="Fewer experts than released (recorded as a departure)."),
    vocab: Optional[int] = typer.Option(None, help="A smaller vocabulary than released (recorded as a departure)."),
    seed: int = typer.Option(0, help="Seed of the random weights (with each tensor's name)."),
    shard_size: str = typer.Option("5GB", help="Largest shard, e.g. 5GB, 500MB (as the hub shards)."),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Write a random-weight checkpoint with a real model family's published shapes and hub layout (sharded
    safetensors with an index; gpt-oss's experts in the released MXFP4 blocks and scales)."""

    synth_config(family, layers, experts, vocab)  # a wrong family or count fails before anything is written
    shard_bytes = parse_size(shard_size)
    check_output_directory(out, force)
    if force and out.exists():
        shutil.rmtree(out)
    with render.status(f"writing {family} shapes to {out}", False) as spinner:
        progress = (lambda i, n, name: spinner.update(f"writing {name} ({i + 1}/{n})")) if spinner else None
        synthesize(
            family, out, layers, experts=experts, vocab=vocab, seed=seed, shard_bytes=shard_bytes, progress=progress
        )
    console.print(f"wrote {out}: {family} shapes, {layers} layers")
