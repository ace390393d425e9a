"""Finding and loading the model a recipe names: a plugin's source (``zoo:<name>``), a local Hugging Face
folder, or a hub id."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from quantlab.content_keys import sha256_file
from quantlab.errors import UserError
from quantlab.plugins import registry


def resolve_model(source: str) -> Path:
    """The local folder holding the model ``source`` names (checked for a config and safetensors weights)."""

    plugin_source = registry().model_source(source)  # e.g. zoo:tiny-gpt-oss, the embedded reference model
    if plugin_source is not None:
        return plugin_source(source)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model {source!r}: {path} has no config.json; point to a Hugging Face model folder")
        if not any(path.glob("*.safetensors")):
            raise UserError(f"model {source!r}: {path} has no .safetensors weights (quantlab never loads pickles)")
        return path
    if path.exists():
        raise UserError(f"model {source!r}: not a folder; point to a Hugging Face model folder")
    return _from_hub(source)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        folder = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"], local_files_only=offline
        )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"model {repo_id!r}: not a local folder, and the hub copy is not reachable here ({reason[:120]}); "
            "download it where the hub is reachable and give the folder's path"
        ) from None
    return Path(folder)


def weights_sha256(folder: Path) -> str:
    """One SHA-256 over the model's safetensors files and config, in name order: the model's identity."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def load_model(folder: Path, dtype=None):
    """(model, tokenizer) from a local folder: offline, safetensors only, no remote code, in eval mode.

    ``dtype`` None keeps the dtype the checkpoint's config states (a bf16 model stays bf16 in memory).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        if dtype is None:
            dtype = getattr(config, "dtype", None) or torch.float32
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
    except UserError:
        raise
    except Exception as error:  # any failure to load means the checkpoint is unusable: say so in one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{folder}: model does not load ({first_line}); check or re-download it") from None
    if getattr(config, "quantization_config", None) is not None and getattr(model, "hf_quantizer", None) is None:
        # A quantized release dequantized on load (gpt-oss's MXFP4 without its GPU kernels): the model now holds
        # plain weights, and saving it must not rename them back to the release's packed names (transformers
        # would write bf16 values under ``*_blocks``, which then load as missing weights). Without the load's
        # conversions, saving uses the architecture's default layout.
        model._weight_conversions = None  # type: ignore[assignment]  # a plain attribute transformers keeps
    model.eval()
    return model, tokenizer


def meta_model(folder: Path):
    """The model's structure on the ``meta`` device (no memory): its parameter names and shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the release's packed format is read and dequantized by Checkpoint
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return model


def float32_bytes(folder: Path) -> int:
    """The model's parameters in float32 (how the lab computes on a CPU), counted on its structure alone."""
    return 4 * sum(p.numel() for p in meta_model(folder).parameters())


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def require_memory(needed_bytes: int, what: str, instead: str) -> None:
    """A one-line error before loading when ``what`` needs more memory than this machine has available."""
    available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise UserError(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB in memory (float32) and this machine has "
            f"{available / 2**30:.1f} GiB available; run it where that fits, or {instead}"
        )


def load_config_and_tokenizer(folder: Path):
    """(config, tokenizer) from a local folder, without the weights: what a client of a served model needs."""
    from transformers import AutoConfig, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{folder}: config or tokenizer does not load ({first_line}); check or re-download it"
        ) from None
    return config, tokenizer


def default_model() -> str:
    """The model a command runs when given none (a plugin's: the embedded reference model)."""

    model = registry().default_model
    if model is None:
        raise UserError("no default model is registered; name a model or a built variant")
    return model


@contextlib.contextmanager
def computing_in_float32(model):
    """The model's bfloat16 / float16 parameters and buffers held in float32 for the block, then restored
    exactly (both conversions are exact). On a CPU without bf16 instructions a bf16 matrix product runs about
    80x slower than float32, and the lab evaluates its baselines in float32: calibration passes use this."""
    import torch

    half = (torch.bfloat16, torch.float16)
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.dtype in half and t.device.type == "cpu"]
    saved = [t.dtype for t in tensors]
    for t in tensors:
        t.data = t.data.float()
    try:
        yield model
    finally:
        for t, dtype in zip(tensors, saved):
            t.data = t.data.to(dtype)
