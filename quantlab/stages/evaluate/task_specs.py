"""lm-eval's side of an evaluation: the task folders the plugins bring, and a task as lm-eval takes it.

A task is its lm-eval name; given local data files (``--data``) it is its own lm-eval config with the dataset
replaced by the files, so that its prompts, filters and scoring stay lm-eval's. Missing columns, a missing
few-shot split and an unreachable hub are one-line errors before lm-eval starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quantlab.errors import UserError
from quantlab.plugins import registry
from quantlab.store import sha256_file


def _first_record(task: str, data_file: Path) -> dict:
    """The first record of a JSON-lines or CSV (GPQA's official layout) data file."""
    try:
        if data_file.suffix == ".csv":
            with open(data_file, newline="", encoding="utf-8") as f:
                return next(csv.DictReader(f))
        return json.loads(data_file.read_text(encoding="utf-8").splitlines()[0])
    except (ValueError, IndexError, StopIteration):
        raise UserError(f"--data {task}={data_file}: not a JSON-lines or CSV file with at least one record") from None


def _seeded_per_item(process_docs):
    """GPQA's process_docs shuffles each item's choices with the global random state, so an item's answer
    position depends on which items came before it (and on --limit). Seed the shuffle per item instead, from
    its question: the same item always gets the same choice order."""
    import datasets

    def seeded(dataset):
        rows = []
        for row in dataset:
            random.seed(int(hashlib.sha256(str(row.get("Question", row)).encode()).hexdigest()[:16], 16))
            rows.append(process_docs(datasets.Dataset.from_list([row]))[0])
        return datasets.Dataset.from_list(rows)

    return seeded


def split_files(data) -> dict[str, Path]:
    """``--data`` for one task as {split: file}: a single path is the test split."""
    if not data:
        return {}
    if isinstance(data, (str, Path)):
        return {"test": Path(data)}
    return {split: Path(path) for split, path in data.items()}


def data_settings(task: str, data: dict[str, Path]) -> dict[str, Any]:
    """What an evaluation records of its local data files: their paths and hashes (None without any)."""

    for split, path in data.items():
        if not path.is_file():
            raise UserError(f"--data {task}:{split}={path}: no such file")
    return {
        "data_files": {split: str(path) for split, path in data.items()} or None,
        "data_sha256": {split: sha256_file(path) for split, path in data.items()} or None,
    }


def task_folders() -> list[Path]:
    """The lm-eval task folders the plugins bring (the embedded model's tasks), searched besides lm-eval's own."""

    return registry().task_folders


def bundled_tasks(manager) -> set[str]:
    folders = [str(folder) for folder in task_folders()]
    return {
        name
        for name, entry in manager.task_index.items()
        if str(entry.get("yaml_path", "")).startswith(tuple(folders)) and entry.get("type") == "task"
    }


def task_manager(metadata: dict | None = None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(folder) for folder in task_folders()], verbosity="ERROR", metadata=metadata)


def task_spec(manager, task: str, data: dict[str, Path], num_fewshot: int | None = None):
    """The task as lm-eval takes it: its name, or (with a local data file) its own config with the dataset
    replaced by the file, so that its prompts, filters and scoring stay lm-eval's."""
    bundled = bundled_tasks(manager)
    if task not in manager.all_tasks:
        raise UserError(f"unknown task {task!r}: not an lm-eval task name (bundled: {', '.join(sorted(bundled))})")
    if task in bundled:  # its data ships with it
        return task
    config = dict(manager._get_config(task))
    if not data:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
            raise UserError(
                f"task {task}: its data ({config.get('dataset_path')}) is on the hub, which is unreachable "
                f"here; give a local copy: --data {task}=path.jsonl"
            )
        return task
    # The split lm-eval evaluates (GPQA's tasks have no test split and evaluate "train").
    eval_split = config.get("test_split") or config.get("validation_split") or "test"
    files = {eval_split if split == "test" else split: path for split, path in data.items()}
    shots = config.get("num_fewshot") or 0 if num_fewshot is None else num_fewshot
    fewshot_split = config.get("fewshot_split") or config.get("training_split")
    if shots and fewshot_split and fewshot_split not in files:
        raise UserError(
            f"task {task} takes its {shots} few-shot examples from its {fewshot_split!r} split, which --data does "
            f"not give: add --data {task}:{fewshot_split}=path.jsonl, or --num-fewshot 0"
        )
    data_file = files[eval_split]
    first = _first_record(task, data_file)
    if callable(config.get("process_docs")):
        # Derived fields: run the task's own process_docs on the first record; a KeyError names a raw column.
        import datasets

        try:
            first = config["process_docs"](datasets.Dataset.from_list([first]))[0]
        except KeyError as error:
            raise UserError(
                f"--data {task}={data_file}: missing column {error.args[0]!r} (lm-eval's {task} reads it); "
                f"the file has {', '.join(sorted(first))}"
            ) from None
        if task.startswith("gpqa"):
            config["process_docs"] = _seeded_per_item(config["process_docs"])
    templates = " ".join(str(config.get(key, "")) for key in ("doc_to_text", "doc_to_target", "doc_to_choice"))
    for column in dict.fromkeys(re.findall(r"\{\{\s*([A-Za-z_]\w*)", templates)):
        if column not in first:
            raise UserError(
                f"--data {task}={data_file}: missing column {column!r} (lm-eval's {task} reads it); "
                f"the file has {', '.join(sorted(first))}"
            )
    config.pop("dataset_name", None)
    config["dataset_path"] = "csv" if data_file.suffix == ".csv" else "json"
    config["dataset_kwargs"] = {"data_files": {split: str(path) for split, path in files.items()}}
    if not shots:  # no few-shot source needed: drop the splits the local files do not have
        config["num_fewshot"] = 0
        for key in ("training_split", "validation_split", "fewshot_split"):
            if config.get(key) and config[key] not in files:
                config[key] = None
    return config


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a connection: asked once, before lm-eval's dataset
    loader would retry an unreachable hub for half a minute and end in a traceback."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True
