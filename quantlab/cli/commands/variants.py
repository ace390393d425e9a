"""``quantlab build`` and ``quantlab import``: variants into the store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from quantlab.cli import render
from quantlab.errors import UserError
from quantlab.stages import build as builder
from quantlab.stages.import_gguf import import_gguf


def build_command(
    recipe: Path = typer.Argument(..., help="The recipe (YAML), e.g. recipes/mxfp4.yaml."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved plan (every tensor's format, method and bits) and stop."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the artifact on disk matches (a cache hit)."),
    out: Path = typer.Option(
        Path("artifacts"),
        "--out",
        "--artifacts",
        help="Where variants go: <out>/<recipe name>/ (the store the other commands read with --artifacts).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (--dry-run) or the manifest as JSON."),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="One layer at a time: read, quantize and write each layer before the next (models larger than "
        "memory; no presets or exports).",
    ),
) -> None:
    """Build a quantized variant from a recipe: quantlab build recipes/<name>.yaml."""
    if dry_run:
        with render.status("resolving the plan", as_json):
            plan = builder.dry_run(recipe)
        return render.print_json(render.plan_json(plan)) if as_json else render.plan_table(plan)
    with render.status(f"building {recipe}", as_json) as status:

        def progress(i, n, name):
            if status is not None:
                status.update(f"quantizing {i + 1}/{n}: {name}")

        result = builder.build(recipe, out, force=force, progress=progress, stream=stream)
    if as_json:
        return render.print_json(result.manifest.to_dict())
    render.build_result(result)


def import_command(
    gguf_file: Path = typer.Argument(..., help="A GGUF file quantized elsewhere (llama-quantize, a community upload)."),
    model: str = typer.Option(..., "--model", help="The model it was quantized from (a folder, a hub id, zoo:...)."),
    name: Optional[str] = typer.Option(None, "--name", help="The variant's name in the store (default: the file's)."),
    force: bool = typer.Option(False, "--force", help="Import again even when the store holds this file's import."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", "--out", help="The store to import into."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Import a GGUF file as a variant of its model: measure, eval and report then treat it like a built one."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"--name {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    with render.status(f"importing {gguf_file}", as_json):
        result = import_gguf(gguf_file, model, name, artifacts, force=force)
    if as_json:
        return render.print_json(result.manifest.to_dict())
    render.build_result(result)
