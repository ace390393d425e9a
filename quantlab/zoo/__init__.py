"""The embedded reference MoE (``tiny-gpt-oss``): its tasks, tokenizer, training, scores and shipped checkpoint."""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path

from quantlab.errors import UserError

SHIPPED_CHECKPOINT = Path(str(files("quantlab.zoo") / "checkpoint" / "tiny-gpt-oss"))
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def resolve_checkpoint(path: Path | None) -> Path:
    """The checkpoint directory to use (the shipped one when ``path`` is None), checked for its files."""
    path = SHIPPED_CHECKPOINT if path is None else Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint directory; train one with `quantlab zoo train --out {path}`")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(
            f"{path}: not a complete checkpoint (missing {', '.join(missing)}); "
            f"retrain with `quantlab zoo train --out {path} --force`"
        )
    return path


def load_reference_model(path: Path | None = None, dtype: str = "float32"):
    """(model, tokenizer) of a reference checkpoint, loaded offline from safetensors only, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 71-tensor load is instant; its bar only clutters the card

    path = resolve_checkpoint(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
    except Exception as error:  # any failure to load means the checkpoint is unusable: say so in one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: checkpoint does not load ({first_line}); retrain or restore it") from None
    model.eval()
    return model, tokenizer


def read_json(path: Path) -> dict:
    """A JSON file's content, or an empty dict when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}
