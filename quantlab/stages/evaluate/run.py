"""Running lm-eval on a variant (or the baseline model) in-process, with repeats, and storing every answer.

The model is quantlab's loaded variant handed to lm-eval's own ``HFLM``, so it is evaluated exactly as built;
tasks are lm-eval YAML (the bundled ones in ``quantlab/stages/evaluate/tasks``). Each repeat is one ``simple_evaluate``
with its own seeds (sampling when temperature > 0; greedy decoding is deterministic, so it runs once). Results
go where the store says (``<variant>/eval/<task>-<settings hash>.json``: lm-eval's results and configs per
repeat, every sample's correctness, the aggregate), keyed by the subject's identity and the settings; the
same request again is a cache hit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantlab import chat
from quantlab.errors import UserError
from quantlab.models.loading import float32_bytes, load_config_and_tokenizer, require_memory
from quantlab.runtimes import Prompting, RuntimeSettings, get_runtime
from quantlab.runtimes.engines import get_engine
from quantlab.runtimes.serve import ServeOptions
from quantlab.runtimes.sessions import TransformersSession, open_session
from quantlab.stages.build import library_versions
from quantlab.stages.evaluate.settings import EvaluationSettings, GenerationLimits
from quantlab.stages.evaluate.task_specs import data_settings, split_files, task_manager, task_spec
from quantlab.stages.parallel import run_on_ray
from quantlab.statistics import bootstrap_interval, pass_at_k
from quantlab.store import ArtifactStore, StoreLocation, Subject, as_store, atomic_write_text, content_key
from quantlab.store.records import Evaluation

METRICS = {"exact_match", "acc"}  # the per-sample correctness lm-eval records for the bundled tasks


SCHEMA_VERSION = 1


def evaluate(
    reference: str,
    task: str,
    limit: int | None = None,
    repeats: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int = 0,
    artifacts: StoreLocation = Path("artifacts"),
    batch_size: int = 64,
    data_file=None,
    backend: str = "hf",
    num_fewshot: int | None = None,
    endpoint: str | None = None,
    generation: dict | None = None,
    chat_template: str | None = None,
    reasoning_effort: str | None = None,
    task_metadata: dict | None = None,
    engine: str | None = None,
    serve_options=None,
    concurrent: int = 64,
    ray: str | None = None,
    workers: int | None = None,
) -> Evaluation:
    """The stored (or freshly computed) evaluation of one task on one variant. ``data_file``: a local copy of the
    task's test split, or {split: file}. ``chat_template``: a name of ``quantlab.chat`` (``model``, ``chatml``,
    ``final-only``, ``plain``) or a Jinja file; None: the model's own if it has one, else none (``plain``).
    ``reasoning_effort``: what reaches the template (None: the template's default). ``task_metadata``: merged into
    the task's metadata as lm-eval's ``--metadata`` does. ``engine``: serve the subject through this engine
    (``quantlab.runtimes.engines``) for the evaluation, with ``serve_options``, ``concurrent`` requests at a time.
    ``ray``: run the repeats as Ray tasks ("local" or a cluster address, ``workers`` at a time on a local cluster);
    the stored evaluation is the sequential one's (each repeat is a function of its seed)."""

    store = as_store(artifacts)
    subject = store.subject(reference)
    get_runtime(backend)  # one line naming the available ones
    template = chat.template_setting(chat_template or chat.default_choice(subject.model_folder))
    if reasoning_effort is not None:
        if reasoning_effort not in chat.REASONING_EFFORTS:
            raise UserError(f"--reasoning-effort {reasoning_effort}: give one of {', '.join(chat.REASONING_EFFORTS)}")
        if template["chat_template"] == "plain":
            raise UserError("--reasoning-effort goes through a chat template; this evaluation applies none (plain)")
    runtime = RuntimeSettings(
        backend=backend,
        temperature=temperature,
        top_p=top_p,
        reasoning_effort=reasoning_effort,  # gpt-oss's chat templates read it
        endpoint=endpoint if get_runtime(backend).needs_endpoint else None,
        **template,
    )
    if engine is not None:
        if not get_runtime(backend).accepts_engine:
            raise UserError(f"--engine {engine} serves the subject itself; drop --backend {backend}")
        runtime = dataclasses.replace(runtime, **_engine_settings(store, subject, engine, serve_options, concurrent))
    settings = EvaluationSettings(
        task=task,
        limit=limit,
        repeats=repeats if temperature > 0 else 1,
        max_new_tokens=max_new_tokens,
        num_fewshot=num_fewshot,
        seed=seed,
        generation=dict(sorted((generation or {}).items())) or None,  # task-specific generation settings
        task_metadata=dict(sorted(task_metadata.items())) if task_metadata else None,
        runtime=runtime,
        **data_settings(task, split_files(data_file)),
    )
    get_runtime(runtime.backend).check(subject, runtime)
    if ray is not None and runtime.engine:
        raise UserError("--ray runs repeats in separate processes; a served evaluation (--engine) runs one server")
    recorded = settings.record()
    settings_hash = content_key(recorded, 16)
    key = content_key({"subject_key": subject.key, "settings": recorded})
    path = ArtifactStore.evaluation_path(subject, task, settings_hash)
    with ArtifactStore.lock(path):
        stored = ArtifactStore.cached(path, key)
        if stored is not None:
            return Evaluation.from_dict(stored, path).at(path, cache_hit=True)
        limits, result = _evaluate(subject, settings, batch_size, ray, workers)
        record = Evaluation.from_dict(
            {
                "schema_version": SCHEMA_VERSION,
                "cache_key": key,
                "subject": subject.name,
                "subject_key": subject.key,
                "task": task,
                # what the run chose where the request left the length open, beside what was asked
                "settings": recorded | limits.record(),
                "settings_hash": settings_hash,
            }
            | result,
            path,
        )
        atomic_write_text(path, record.to_json(indent=1, default=str))
    return record.at(path)


def _engine_settings(
    store: ArtifactStore, subject: Subject, engine: str, serve_options, concurrent: int
) -> dict[str, Any]:
    """What a served evaluation records of its server: the engine, its version, what it loaded, its options,
    and the request fields that keep it faithful (not its port, which changes every start)."""

    chosen, options = get_engine(engine), serve_options or ServeOptions()
    chosen.launcher()  # one line when it is not installed
    load = chosen.what_to_load(store, subject, options)
    return {
        "backend": "served",
        "engine": chosen.name,
        "engine_version": chosen.version(),
        "loaded": load.kind,
        "concurrent": concurrent,
        "request_defaults": dict(chosen.speaks().request_defaults) or None,
    } | options.record()


def _one_repeat(subject: Subject, settings: EvaluationSettings, seed: int, batch_size: int) -> tuple[dict, Any]:
    """One repeat in a process of its own (a Ray task): its result, and the experts kernel transformers chose."""
    with contextlib.ExitStack() as stack:
        prepared = _prepare(subject, settings, stack)
        experts = getattr(prepared["prompting"].config, "_experts_implementation", None)
        return _run_once(prepared, settings, seed, batch_size), experts


def _evaluate(
    subject: Subject,
    settings: EvaluationSettings,
    batch_size: int,
    ray: str | None = None,
    workers: int | None = None,
) -> tuple[GenerationLimits, dict]:
    """Every repeat of one task on one model: the generation length chosen where the request left it open, and
    per-item correctness, the score with its interval, pass@k."""
    seed = settings.seed
    if ray is not None:
        # The workers choose the same limits from the same task and config; the driver works them out itself
        # (no weights loaded) rather than trust a worker's copy of the settings.
        limits = _generation_plan(subject, settings)[3]
        started = time.perf_counter()
        jobs = [(subject, settings, seed + r, batch_size) for r in range(settings.repeats)]
        done, _ = run_on_ray(_one_repeat, jobs, ray, workers)
        return limits, _summary([result for result, _ in done], seed, done[0][1], time.perf_counter() - started, None)
    server_record = None
    with contextlib.ExitStack() as stack:
        prepared = _prepare(subject, settings, stack)  # once: task index, session, generation settings
        server = getattr(prepared["session"], "server", None)
        if server is not None:
            server_record = {
                "startup_s": round(server.startup_s, 2),
                "log": str(server.log),
                "loaded": str(server.loaded_path),
            }
        started = time.perf_counter()
        per_repeat = [_run_once(prepared, settings, seed + r, batch_size) for r in range(settings.repeats)]
        seconds = time.perf_counter() - started
    experts = getattr(prepared["prompting"].config, "_experts_implementation", None)
    return prepared["limits"], _summary(per_repeat, seed, experts, seconds, server_record)


def _summary(per_repeat: list[dict], seed: int, experts, seconds: float, server_record) -> dict:
    correct = np.array([[s["correct"] for s in repeat["samples"]] for repeat in per_repeat]).T  # (items, repeats)
    low, high = bootstrap_interval(correct, seed=seed)
    return {
        "items": int(correct.shape[0]),
        "repeats": int(correct.shape[1]),
        "seeds": [seed + r for r in range(correct.shape[1])],
        "metric": per_repeat[0]["metric"],
        "filter": per_repeat[0]["filter"],
        "score": float(correct.mean()),
        "ci95": [low, high],
        "per_repeat_scores": [float(x) for x in correct.mean(axis=0)],
        # mean@k is the score itself (the mean over items and the k repeats); pass@k where repeats sample
        "pass_at_k": {str(k): pass_at_k(correct, k) for k in sorted({1, correct.shape[1]})},
        "correct": correct.tolist(),
        "doc_ids": [s["doc_id"] for s in per_repeat[0]["samples"]],
        "lm_eval": [
            {"results": r["results"], "config": _portable(r["config"]), "samples": r["samples"]} for r in per_repeat
        ],
        # transformers picks the MoE experts' kernel at load time (grouped_mm by default in 5.23, recorded since
        # the checkpoint's config does not name one): part of what produced these answers
        "versions": _versions() | {"experts_implementation": experts},
        "seconds": round(seconds, 2),
        "server": server_record,
    }


def _portable(value):
    """lm-eval's task config with its functions named (``module.name``) rather than written as ``repr``, whose
    memory address would make two runs of the same evaluation store different bytes."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return value


def _versions() -> dict[str, str]:
    from importlib import metadata

    return library_versions() | {"lm_eval": metadata.version("lm_eval")}


def _generation_plan(subject: Subject, settings: EvaluationSettings) -> tuple[Any, Any, dict | None, GenerationLimits]:
    """lm-eval's task index, the task spec, the generation settings every repeat is given, and the length chosen
    where the request left it open: from the task and the model's config alone (no weights)."""

    task = settings.task
    manager = task_manager(dict(settings.task_metadata) if settings.task_metadata else None)
    spec = task_spec(manager, task, split_files(settings.data_files), settings.num_fewshot)
    runtime = settings.runtime
    parts: dict[str, Any] = {}
    if runtime.temperature > 0 or settings.max_new_tokens:
        parts = {"do_sample": runtime.temperature > 0}
        if runtime.temperature > 0:
            parts |= {"temperature": runtime.temperature, "top_p": runtime.top_p}
        if settings.max_new_tokens:
            parts["max_gen_toks"] = settings.max_new_tokens
    parts |= runtime.request_defaults or {}  # what keeps a served engine faithful (llama.cpp's penalty off)
    parts |= settings.generation or {}  # --gen TASK:key=value wins over the global options
    config = spec if isinstance(spec, dict) else manager._get_config(task)
    context = int(load_config_and_tokenizer(subject.model_folder)[0].max_position_embeddings)
    limits = GenerationLimits()
    if config.get("output_type") == "generate_until":
        asked = parts.get("max_gen_toks", (config.get("generation_kwargs") or {}).get("max_gen_toks"))
        if asked is None:
            # lm-eval's HFLM would silently cut every answer at 256 new tokens: give half the context instead, and say so.
            parts["max_gen_toks"] = max(1, min(32768, context // 2))
            limits = GenerationLimits(default=parts["max_gen_toks"])
        elif int(asked) >= context:
            # A task written for a long-context model (aime25 asks for 32768 new tokens): lm-eval refuses a length
            # the model cannot hold. Keep half the context for the prompt and say so in the stored settings.
            parts["max_gen_toks"] = max(1, context // 2)
            limits = GenerationLimits(requested=int(asked), used=parts["max_gen_toks"], context=context)
    return manager, spec, parts or None, limits


def _prepare(subject: Subject, settings: EvaluationSettings, stack: contextlib.ExitStack) -> dict:
    """What every repeat shares: lm-eval's task index and the task spec, the subject's open session (closed with
    ``stack``), how prompts reach it, the generation settings."""

    manager, spec, gen_kwargs, limits = _generation_plan(subject, settings)
    if not get_runtime(settings.runtime.backend).runs_elsewhere:
        require_memory(
            float32_bytes(subject.model_folder),
            f"evaluating {subject.name} with transformers",
            "evaluate its GGUF export with --backend llama.cpp, or serve it (--engine vllm)",
        )
    # a server or llama.cpp (which maps the GGUF file) runs the model elsewhere: the client needs the tokenizer
    # and config, not the weights in memory, so a model larger than memory is evaluated that way
    session = stack.enter_context(open_session(subject, settings.runtime))
    if isinstance(session, TransformersSession) and session.tokenizer is not None:
        # what the session loaded: its config records the experts' kernel transformers chose at load time
        config, tokenizer = session.model.config, session.tokenizer
    else:
        config, tokenizer = load_config_and_tokenizer(subject.model_folder)
    template = None  # the Jinja source prompts are rendered with; None: no chat template (plain)
    if settings.runtime.chat_template != "plain":
        template = chat.template_source(settings.runtime.chat_template, getattr(tokenizer, "chat_template", None))
    return {
        "manager": manager,
        "spec": spec,
        "session": session,
        "prompting": Prompting.of(subject.model_folder, config, tokenizer, template, settings.runtime),
        "gen_kwargs": gen_kwargs,
        "limits": limits,
    }


def _run_once(prepared: dict, settings: EvaluationSettings, seed: int, batch_size: int) -> dict:
    import lm_eval

    task = settings.task
    lm = prepared["session"].language_model(prepared["prompting"], settings.runtime, seed, batch_size)
    # Copies: lm-eval may edit the task config and generation settings it is given, and they serve every repeat.
    spec, gen_kwargs = copy.deepcopy(prepared["spec"]), copy.deepcopy(prepared["gen_kwargs"])
    torch.manual_seed(seed)
    try:
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec],
            task_manager=prepared["manager"],
            limit=settings.limit,
            log_samples=True,
            gen_kwargs=gen_kwargs,
            num_fewshot=settings.num_fewshot,
            apply_chat_template=prepared["prompting"].chat_template is not None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            verbosity="ERROR",
        )
    except Exception as error:
        server = getattr(prepared["session"], "server", None)
        if server is not None and not server.alive():
            raise UserError(
                f"{server.engine} server died during the evaluation of {task} ({server.died()}); nothing was stored"
            ) from None
        if server is not None and not isinstance(error, UserError):
            raise UserError(
                f"{server.engine} server: the evaluation of {task} failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200] if str(error) else ''}); log: {server.log}; nothing was stored"
            ) from None
        if not _unreachable(error):
            raise
        where = (
            spec.get("dataset_path")
            if isinstance(spec, dict)
            else prepared["manager"]._get_config(task).get("dataset_path")
        )
        raise UserError(
            f"task {task}: its data ({where}) is on the hub, which is unreachable here; give a local copy: "
            f"--data {task}=path.jsonl"
        ) from None
    samples = output["samples"][task]
    # A task with several filters (gsm8k: strict-match, flexible-extract) logs one sample per doc and filter:
    # score with its first filter, as lm-eval's results table lists it first.
    first_filter = samples[0].get("filter")
    samples = sorted((s for s in samples if s.get("filter") == first_filter), key=lambda s: s["doc_id"])
    metric = next(m for m in METRICS if m in samples[0])
    return {
        "results": output["results"][task],
        "config": output["configs"][task],
        "metric": metric,
        "filter": first_filter,
        "samples": [
            {
                "doc_id": s["doc_id"],
                "correct": float(s[metric]),
                "target": s.get("target"),
                "response": (s.get("filtered_resps") or [None])[0],
                "generated": _generated_text(s),
                "prompt": _prompt(s),
            }
            for s in samples
        ],
    }


def _generated_text(sample: dict) -> str | None:
    """What the model generated for a sample before lm-eval's filters extracted the answer (None: a
    log-likelihood task, which generates nothing)."""
    responses = sample.get("resps") or []
    first = responses[0] if responses else None
    first = first[0] if isinstance(first, (list, tuple)) and first else first
    return first if isinstance(first, str) else None


def _prompt(sample: dict) -> str | None:
    """The rendered prompt lm-eval sent for a sample (its first request's context): what the model saw."""
    arguments = sample.get("arguments") or []
    first = arguments[0] if arguments else None
    return first[0] if isinstance(first, (list, tuple)) and first and isinstance(first[0], str) else None


def _unreachable(error: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) says the hub could not be reached: datasets and
    huggingface_hub raise their own types for it (ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError,
    requests' and httpx's connection errors), so they are recognised by kind, not by one class."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        kinds = " ".join(c.__name__ for c in type(error).__mro__)
        if isinstance(error, (ConnectionError, TimeoutError)) or any(
            word in kinds for word in ("Connection", "Offline", "LocalEntryNotFound", "NameResolution", "ConnectError")
        ):
            return True
        error = error.__cause__ or error.__context__
    return False
