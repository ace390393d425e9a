"""``quantlab bench serve``: evaluation throughput through a served engine against transformers, in one run.

The reference is the lab's own in-process runtime: lm-eval's HFLM running transformers' ``generate`` on the
variant (batched, as ``quantlab eval`` runs it). The same greedy items are then evaluated through the engine's
server (lm-eval's completions client, ``concurrent`` requests in flight, the engine batching them). Both runs go
into a fresh temporary store, so neither is a cache hit; the rate is generated tokens (the variant's tokenizer
counting the answers each produced) per second of evaluation, the server's start-up timed apart.
"""

from __future__ import annotations

import functools
import platform
import tempfile
import time
from pathlib import Path

from quantlab.models.loading import load_model
from quantlab.runtimes.serve import ServeOptions
from quantlab.stages.build import build
from quantlab.stages.evaluate.compare import different_answers
from quantlab.stages.evaluate.run import evaluate
from quantlab.store.records import Evaluation

TASK = "zoo_aime_style"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _generated_tokens(result: Evaluation, tokenizer) -> int:
    # the whole generation (analysis and final channels), not the answer lm-eval's filter extracts from it
    return sum(len(tokenizer(s["generated"] or "")["input_ids"]) for s in result.lm_eval[0]["samples"])


def bench_serve(
    recipe: Path, engine: str = "vllm", items: int = 200, dtype: str = "auto", concurrent: int = 64, progress=None
) -> dict:
    import os

    with tempfile.TemporaryDirectory(prefix="quantlab-bench-serve-") as folder:
        store = Path(folder)
        if progress:
            progress(f"building {recipe}")
        built = build(recipe, store)
        name = built.manifest.variant
        _, tokenizer = load_model(built.path / "model")
        evaluated = functools.partial(evaluate, limit=items, artifacts=store, reasoning_effort="high")
        if progress:
            progress(f"evaluating {items} items with transformers")
        started = time.perf_counter()
        local = evaluated(name, TASK)
        local_s = time.perf_counter() - started
        if progress:
            progress(f"evaluating {items} items through {engine}")
        options = ServeOptions(dtype=dtype)
        started = time.perf_counter()
        served = evaluated(name, TASK, engine=engine, serve_options=options, concurrent=concurrent)
        served_total_s = time.perf_counter() - started
    local_tokens, served_tokens = _generated_tokens(local, tokenizer), _generated_tokens(served, tokenizer)
    local_rate, served_rate = local_tokens / local.seconds, served_tokens / served.seconds
    return {
        "variant": name,
        "task": TASK,
        "items": items,
        "cpu": _cpu(),
        "cores": len(os.sched_getaffinity(0)),
        "transformers": {
            "seconds": local.seconds,
            "seconds_with_load": round(local_s, 2),
            "generated_tokens": local_tokens,
            "tokens_per_s": round(local_rate, 1),
            "score": local.score,
        },
        "engine": {
            "name": engine,
            "version": served.settings["engine_version"],
            "dtype": dtype,
            "concurrent": concurrent,
            "startup_s": (served.server or {})["startup_s"],
            "seconds": served.seconds,
            "seconds_with_startup": round(served_total_s, 2),
            "generated_tokens": served_tokens,
            "tokens_per_s": round(served_rate, 1),
            "score": served.score,
        },
        "throughput_ratio": round(served_rate / local_rate, 3),
        "answers_differ": different_answers(local, served),
    }
