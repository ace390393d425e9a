"""``quantlab bench ...``: speed and quality benchmarks, as ratios against references timed in the same run."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Optional

import typer

from quantlab.bench import formats as bench
from quantlab.bench import memory
from quantlab.bench.audit import bench_audit, save
from quantlab.bench.audit_causes import bench_causes
from quantlab.bench.families import run_families
from quantlab.bench.measure_cost import measure_variant_cost
from quantlab.bench.plots import plot_rate_distortion
from quantlab.bench.ray_cells import compare_ray
from quantlab.bench.serve import bench_serve
from quantlab.cli import render
from quantlab.cli.options import ENGINE_HELP, Artifacts
from quantlab.cli.render import bench as bench_tables
from quantlab.cli.render import console
from quantlab.errors import UserError
from quantlab.models.loading import default_model
from quantlab.stages.synthetic import synth_config


def bench_formats(
    quality: bool = typer.Option(False, "--quality", help="Rate-distortion table (SQNR vs bits) instead of speed."),
    size: int = typer.Option(4096, min=256, help="Speed: the matrix is size x size."),
    repeats: int = typer.Option(3, min=1, help="Speed: best of this many runs."),
    plot: Optional[Path] = typer.Option(None, help="Quality: also write the rate-distortion plot (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Speed: print the table as Markdown (docs/formats.md)."),
) -> None:
    """Quantize/dequantize throughput of every format vs its reference and a plain copy; or, with --quality,
    SQNR against bits per weight on Gaussian and on the reference model's weights."""
    with render.status("benchmarking", as_json) as status:
        progress = (lambda name: status.update(f"benchmarking {name}")) if status is not None else None
        result = bench.rate_distortion(progress) if quality else bench.time_formats(size, repeats, progress)
    if quality and plot is not None:
        plot_rate_distortion(result, plot)
    if as_json:
        return render.print_json(result)
    bench_tables.formats(result, quality, markdown)


def bench_build_memory(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    synthetic: bool = typer.Option(
        True, help="Also measure a synthetic ~100M-parameter gpt-oss (written to a temp folder)."
    ),
    stream: bool = typer.Option(
        False, "--stream", help="Instead: build --stream of a synthetic model 4x larger than an enforced limit."
    ),
    family: str = typer.Option("gpt-oss-20b", "--family", help="--stream: the synthetic model's shapes."),
    layers: int = typer.Option(12, "--layers", min=1, help="--stream: its layers."),
    experts: Optional[int] = typer.Option(None, "--experts", min=1, help="--stream: fewer experts than released."),
    ratio: float = typer.Option(4.0, "--ratio", min=1.0, help="--stream: model size over the memory limit."),
    gptq: bool = typer.Option(False, "--gptq", help="--stream: also int4 GPTQ of every expert (layer by layer)."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="--stream: where the synthetic model and the variant go (default: a temp folder)."
    ),
) -> None:
    """Peak memory of quantlab build (mxfp4 experts) against the load-only floor, the model and the output."""
    if stream:
        return _bench_streaming_memory(family, layers, experts, ratio, gptq, workdir, as_json)
    results = []
    with render.status("measuring build memory", as_json):
        results.append(memory.measure_build(default_model()))
        if synthetic:
            with tempfile.TemporaryDirectory(prefix="quantlab-synthetic-") as folder:
                results.append(
                    memory.measure_build(str(memory.synthetic_model(Path(folder) / "synthetic-gpt-oss-100m")))
                )
                results[-1]["model"] = "synthetic gpt-oss (hidden 512, 8 layers, 16 experts)"
    if as_json:
        return render.print_json(results)
    bench_tables.build_memory(results)


def _bench_streaming_memory(family, layers, experts, ratio, gptq, workdir, as_json) -> None:
    synth_config(family, layers, experts)  # a wrong family or count: one line before anything is written
    runs = [("mxfp4 experts", "  - select: {component: experts}\n    format: mxfp4\n", "")]
    if gptq:
        calibration = 'calibration: {dataset: "zoo:aime-style", samples: 16, sequence_length: 64, seed: 0}\n'
        groups = "  - select: {component: experts}\n    format: {name: int4, group_size: 32}\n    method: gptq\n"
        runs.append(("int4 GPTQ experts (g32), layer by layer", groups, calibration))
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quantlab-stream-")))
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        with render.status("building under a memory limit", as_json):
            for label, groups, calibration in runs:
                results.append(
                    memory.measure_streaming_build(
                        family, layers, folder, experts, groups, calibration, ratio=ratio, label=label
                    )
                )
    if as_json:
        return render.print_json(results)
    bench_tables.streaming_memory(results)


def bench_families(
    families: str = typer.Option(
        "gpt-oss-20b,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b,olmoe-1b-7b", "--families", help="Comma-separated."
    ),
    layers: int = typer.Option(1, "--layers", min=1, help="Layers of each synthetic model."),
    experts: Optional[int] = typer.Option(
        None, "--experts", min=1, help="Experts of every family (default: a CPU-sized count per family)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every synthetic family of real shapes through build (F32 export, mxfp4, int4 GPTQ, Q4_K_M), llama-quantize's
    choices, measure and a short eval."""
    names = [f.strip() for f in families.split(",") if f.strip()]
    for name in names:
        synth_config(name, layers, experts)  # a wrong family: one line before any work
    with render.status("running the families", as_json) as status:
        say = (lambda m: status.update(m)) if status is not None else None
        rows = run_families(names, layers, dict.fromkeys(names, experts) if experts else None, progress=say)
    if as_json:
        return render.print_json(rows)
    bench_tables.families(rows)


def bench_ray(
    limit: int = typer.Option(100, "--limit", min=1, help="AIME-style items each cell is evaluated on."),
    tokens: int = typer.Option(2048, "--tokens", min=256, help="Measurement tokens of each cell."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A three-factor attribution sequentially and with --ray on 1 and 2 local workers: wall times, and whether
    each stored attribution equals the sequential one."""
    with render.status("attributing", as_json) as status:
        result = compare_ray(limit, tokens, progress=(lambda m: status.update(m)) if status is not None else None)
    if as_json:
        return render.print_json(result)
    bench_tables.ray(result)


def bench_measure(
    variant: str = typer.Argument("mxfp4", help="A built variant (artifact folder or name under --artifacts)."),
    artifacts: Artifacts = Path("artifacts"),
    tokens: int = typer.Option(16384, "--tokens", min=256),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Time of quantlab measure against two plain forward passes (baseline and variant) over the same tokens."""
    with render.status("timing", as_json):
        result = measure_variant_cost(variant, artifacts, tokens)
    if as_json:
        return render.print_json(result)
    bench_tables.measure(result)


def bench_serve_command(
    recipe: Path = typer.Argument(Path("bf16"), help="The variant to serve: a shipped recipe's name or a recipe file."),
    engine: str = typer.Option("vllm", "--engine", help=ENGINE_HELP),
    items: int = typer.Option(200, "--items", min=1, help="Greedy AIME-style items, high effort."),
    dtype: str = typer.Option("auto", "--dtype", help="vllm: activations' dtype (auto: the checkpoint's)."),
    concurrent: int = typer.Option(64, "--concurrent", min=1, help="Requests in flight at once."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluation throughput (generated tokens/s) through a served engine against transformers' generate on the
    same items, as a ratio in one run; the server's start-up time."""
    with render.status("benchmarking", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else None
        result = bench_serve(recipe, engine, items, dtype, concurrent, say)
    if as_json:
        return render.print_json(result)
    bench_tables.serve(result)


AUDIT_PARTS = ("table", "false_positives", "power", "calibrated", "differential", "causes")


def bench_audit_command(
    parts: Optional[list[str]] = typer.Option(
        None,
        "--part",
        help="table, false_positives, power, calibrated, differential or causes (repeatable; default: the first "
        "three).",
    ),
    audits: int = typer.Option(20, "--audits", min=1, help="false_positives: audits per faithful server."),
    repeats: int = typer.Option(10, "--repeats", min=1, help="power: audits per distortion and budget."),
    checks: Optional[list[str]] = typer.Option(
        None, "--check", help="false_positives: only this check; power: only the distortions it must find (repeatable)."
    ),
    artifacts: Artifacts = Path("artifacts"),
    docs: Path = typer.Option(Path("docs"), "--docs", help="Where bench_audit.json and audit_power.png go."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The audit against servers the lab starts (faithful and distorted): verdict table, false-positive rate
    over repeated audits, the queries each distortion needs for 80% power, the same against a trusted
    endpoint (differential), and the cause ranking's answers on held-out faults (causes)."""
    chosen = tuple(parts or ("table", "false_positives", "power"))
    for part in chosen:
        if part not in AUDIT_PARTS:
            raise UserError(f"--part {part!r}: choose one of {', '.join(AUDIT_PARTS)}")
    with render.status("benchmarking the audit", as_json) as status:
        say = (lambda message: status.update(message)) if status is not None else (lambda message: None)
        result = bench_audit(
            artifacts, audits, repeats, tuple(p for p in chosen if p != "causes"), say, tuple(checks or ())
        )
        if "causes" in chosen:
            result["causes"] = bench_causes(artifacts, say)
    written = save(result, docs)
    if as_json:
        return render.print_json(result)
    bench_tables.audit(result)
    console.print("written: " + ", ".join(str(p) for p in written), highlight=False)
