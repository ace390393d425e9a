"""The benchmarks' tables (``quantlab bench ...``): each one's ratios against the reference measured in the same
run, as the command prints them."""

from __future__ import annotations

from rich.table import Table

from quantlab.bench import formats as bench
from quantlab.cli.render import VERDICT_STYLE, console, wide


def formats(result: dict, quality: bool, markdown: bool) -> None:
    if markdown and not quality:
        return print(bench.speed_markdown(result))
    rows = result["formats"]
    if quality:
        table = Table(
            "format",
            "bits/w",
            "SQNR gauss dB",
            "6.02·R dB",
            "model bits/w",
            "SQNR model dB",
            title=f"Rate-distortion: Gaussian {result['gaussian']}, reference model ({result['model_values']:,} weights)",
        )
        for r in rows:
            if "skipped" in r:
                table.add_row(r["format"], "skipped: " + r["skipped"][:60], "", "", "", "")
                continue
            table.add_row(
                r["format"],
                f"{r['bits_per_weight']:.3f}",
                f"{r['sqnr_gaussian_db']:.2f}",
                f"{r['gaussian_bound_db']:.2f}",
                f"{r['model_bits_per_weight']:.3f}",
                f"{r['sqnr_model_db']:.2f}",
            )
    else:
        table = Table(
            "format",
            "quant Mw/s",
            "dequant Mw/s",
            "q/copy",
            "dq/copy",
            "reference",
            "q/ref",
            "dq/ref",
            "q/ggml 1T",
            "torch q Mw/s",
            "torch dq Mw/s",
            title=f"{result['matrix'][0]}x{result['matrix'][1]} float32, best of {result['repeats']}; "
            f"copy {result['copy_mw_s']:.0f} Mw/s (into a written buffer: {result['copy_preallocated_mw_s']:.0f})",
        )
        for r in rows:
            if "skipped" in r:
                table.add_row(r["format"], "skipped: " + r["skipped"][:60], *[""] * 10)
                continue
            fmt = lambda key, suffix="", r=r: f"{r[key]}{suffix}" if key in r else ""  # noqa: E731
            table.add_row(
                r["format"],
                fmt("quantize_mw_s"),
                fmt("dequantize_mw_s"),
                fmt("quantize_vs_copy"),
                fmt("dequantize_vs_copy"),
                r.get("reference", ""),
                fmt("quantize_vs_reference", "x"),
                fmt("dequantize_vs_reference", "x"),
                fmt("quantize_vs_ggml_single_thread", "x"),
                fmt("torch_quantize_mw_s"),
                fmt("torch_dequantize_mw_s"),
            )
    console.print(table)


def build_memory(results: list[dict]) -> None:
    table = Table(
        "model",
        "model MB",
        "largest matrix MB",
        "packed MB",
        "load-only peak MB",
        "build peak MB",
        "build - load MB",
        "(build - load) / model",
    )
    for r in results:
        table.add_row(
            r["model"],
            f"{r['model_bytes_in_memory'] / 1e6:.1f}",
            f"{r['largest_matrix_float32_bytes'] / 1e6:.1f}",
            f"{r['packed_bytes'] / 1e6:.1f}",
            f"{r['load_only_peak_bytes'] / 1e6:.0f}",
            f"{r['build_peak_bytes'] / 1e6:.0f}",
            f"{r['build_over_load_bytes'] / 1e6:.0f}",
            f"{r['build_over_load_vs_model']:.2f}",
        )
    console.print(table)


def measure(result: dict) -> None:
    console.print(
        f"{result['tokens']:,} tokens: two plain forward passes {result['two_forward_passes_s']:.2f} s, "
        f"quantlab measure {result['measure_s']:.2f} s: ratio {result['ratio']:.2f} (best of {result['repeats']})"
    )


def serve(result: dict) -> None:
    local, served = result["transformers"], result["engine"]
    console.print(
        f"{result['variant']}, {result['items']} {result['task']} items, greedy, high effort, on {result['cpu']} "
        f"({result['cores']} cores):\n"
        f"  transformers generate (lm-eval HFLM, in-process): {local['generated_tokens']} tokens in "
        f"{local['seconds']:.1f} s = {local['tokens_per_s']:.0f} tokens/s (score {local['score']:.3f})\n"
        f"  {served['name']} ({served['version']}, dtype {served['dtype']}, {served['concurrent']} requests in flight): "
        f"{served['generated_tokens']} tokens in {served['seconds']:.1f} s = {served['tokens_per_s']:.0f} tokens/s "
        f"(score {served['score']:.3f}); server start-up {served['startup_s']:.1f} s\n"
        f"  throughput ratio {served['name']} / transformers: {result['throughput_ratio']:.2f}; answers that differ: "
        f"{result['answers_differ']} of {result['items']}",
        highlight=False,
    )


def audit(result: dict) -> None:
    """The audit benchmark: verdicts per server, false-positive rates, queries for 80% power."""
    if "table" in result:
        checks = list(result["table"][0]["verdicts"])
        table = Table("server", *checks, "weights names", title="audit verdicts (seed 0)", title_justify="left")
        for row in result["table"]:
            table.add_row(
                row["server"],
                *[f"[{VERDICT_STYLE.get(v, '')}]{v}[/]" for v in row["verdicts"].values()],
                row["named"] or "",
            )
        wide().print(table)
    if "false_positives" in result:
        table = Table(
            "faithful server", "check", "failed", "rate [95% CI]", title="false positives", title_justify="left"
        )
        for server, rates in result["false_positives"].items():
            for check, rate in rates.items():
                table.add_row(
                    server,
                    check,
                    f"{rate['failed']}/{rate['audits']}",
                    f"{rate['failed'] / rate['audits']:.0%} [{rate['ci95'][0]:.0%}, {rate['ci95'][1]:.0%}]",
                )
        wide().print(table)
    if "differential" in result:
        differential = result["differential"]
        checks = list(differential["false_positives"])
        table = Table(
            "server",
            *checks,
            title=f"differential audits against {differential['trusted']} (seed 0; false positives: seeds 1..N)",
            title_justify="left",
        )
        table.add_row(
            f"{differential['audited']} (faithful), false positives",
            *[f"{r['failed']}/{r['audits']}" for r in differential["false_positives"].values()],
        )
        for row in differential["table"]:
            table.add_row(row["server"], *[f"[{VERDICT_STYLE.get(v, '')}]{v}[/]" for v in row["verdicts"].values()])
        wide().print(table)
    if "causes" in result:
        causes = result["causes"]
        table = Table(
            "fault",
            "a correct answer",
            "ranked first",
            "explains it",
            "correct",
            title=f"the cause ranking on held-out faults: {causes['rank_1_correct']} of {causes['faults']} answered "
            f"right ({causes['detected']} detected); then the shipped distortions",
            title_justify="left",
        )
        for row in causes["table"] + causes.get("shipped", []):
            explains = "" if row["first_explains"] is None else str(row["first_explains"]).lower()
            table.add_row(
                row["fault"],
                row["expected"],
                row["first"] or "(no check failed)",
                explains,
                "yes" if row["correct"] else "no",
            )
        wide().print(table)
    if "calibrated" in result:
        calibrated = result["calibrated"]
        table = Table(
            "server",
            "weights check failed",
            "rate [95% CI]",
            title=f"weights check calibrated on {calibrated['source']}: threshold {calibrated['threshold']:.2e}",
            title_justify="left",
        )
        for row in calibrated["rows"]:
            table.add_row(
                row["server"],
                f"{row['failed']}/{row['audits']}",
                f"{row['failed'] / row['audits']:.0%} [{row['ci95'][0]:.0%}, {row['ci95'][1]:.0%}]",
            )
        wide().print(table)
    if "power" in result:
        table = Table(
            "distortion", "check", "detected at each budget", "queries for 80%", title="power", title_justify="left"
        )
        for curve in result["power"]:
            points = ", ".join(f"{p['queries']}: {p['detected']}/{p['audits']}" for p in curve["points"])
            table.add_row(curve["server"], curve["check"], points, str(curve["queries_for_80_percent"] or "> largest"))
        wide().print(table)


def streaming_memory(results: list[dict]) -> None:
    """``quantlab bench build-memory --stream``: each build's peak against its enforced limit and largest layer."""
    table = Table(
        "model",
        "recipe",
        "in memory",
        "limit",
        "model / limit",
        "largest layer",
        "peak",
        "peak / layer",
        "within limit",
        title="build --stream under an enforced memory limit (peak: VmHWM of the build process)",
        title_justify="left",
    )
    gib = 2**30
    for r in results:
        table.add_row(
            r["model"],
            r["recipe"],
            f"{r['model_bytes_in_memory'] / gib:.2f} GiB",
            f"{r['limit_bytes'] / gib:.2f} GiB",
            f"{r['model_over_limit']:.1f}x",
            f"{r['largest_layer']} {r['largest_layer_bytes'] / gib:.2f} GiB",
            f"{r['peak_bytes'] / gib:.2f} GiB",
            f"{r['peak_over_largest_layer']:.2f}",
            "yes" if r["within_limit"] else f"no: {r['failure']}",
        )
    wide().print(table)


def ray(result: dict) -> None:
    """``quantlab bench ray``: the wall time of each run and whether its stored attribution is the sequential one."""
    table = Table(
        "run",
        "wall s",
        "vs sequential",
        "same stored attribution",
        "cells",
        title=f"3-factor attribution, {result['limit']} items, {result['torch_threads']} torch threads per task",
        title_justify="left",
    )
    for row in result["runs"]:
        table.add_row(
            row["run"],
            f"{row['wall_s']:.1f}",
            f"{row['vs_sequential']:.2f}",
            str(row["same_stored_attribution"]),
            str(row["cells"]),
        )
    console.print(table)


def families(rows: list[dict]) -> None:
    """``quantlab bench families``: one row per synthetic family."""
    table = Table(
        "family",
        "layers, experts",
        "F32 export rel. L2",
        "Q4_K_M = llama-quantize (types, bytes)",
        "Q4_K_M mean KLD (n tokens)",
        "GPQA-style accuracy (n)",
        "seconds",
        title="Synthetic families of real shapes (random weights)",
        title_justify="left",
    )
    for r in rows:
        same = r["q4_k_m_vs_llama_quantize"]
        table.add_row(
            r["family"],
            f"{r['layers']}, {r['experts']}",
            f"{r['f32_logits_relative_l2']:.1e}" + (" (YaRN rounding)" if r["runtime_departures"] else ""),
            f"{same['same_types']}, {same['same_bytes']} ({same['tensors']} tensors: {', '.join(same['types'])})",
            f"{r['q4_k_m_kld']['mean']:.4f} ({r['q4_k_m_kld']['n']})",
            f"{100 * r['q4_k_m_eval']['accuracy']:.0f}% ({r['q4_k_m_eval']['items']})",
            f"{r['seconds']['total']:.0f}",
        )
    wide().print(table)
