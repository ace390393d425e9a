"""``quantlab bench formats``: quantize / dequantize throughput of every format, and its rate-distortion.

Speed: millions of weights per second on one matrix, each format beside the reference implementation it must
match (gguf-py's numpy code, ggml's C quantizer single-threaded, torchao, bitsandbytes) and beside a plain
tensor copy, the memory-bandwidth bound. Every figure is the best of ``repeats`` runs, measured in this run.

Quality: SQNR (dB) against bits per weight, on Gaussian weights and on the reference model's own weights,
beside the Gaussian rate-distortion bound 6.02·R dB.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from quantlab.formats import fused, get_format, ggml
from quantlab.formats.gguf import GGUF_TYPES, TORCH_QUANTIZED, dequantize_blocks, quantize_legacy
from quantlab.models.loading import default_model, load_model, resolve_model

# The formats a recipe can name, with the parameters the benchmark uses.
BENCH_FORMATS: list[tuple[str, dict[str, Any]]] = [
    ("bf16", {}),
    ("fp16", {}),
    ("fp8_e4m3", {"granularity": "channel"}),
    ("fp8_e4m3", {"granularity": "block"}),
    ("fp8_e5m2", {"granularity": "channel"}),
    ("mxfp8", {}),
    ("mxfp4", {}),
    ("nvfp4", {}),
    ("int8", {"group_size": None}),
    ("int4", {"group_size": 128}),
    ("int4", {"group_size": 32, "symmetric": False}),
    ("int3", {"group_size": 64}),
    ("int2", {"group_size": 32, "symmetric": False}),
    ("nf4", {}),
    ("fp4", {}),
]
BENCH_FORMATS += [(f"gguf:{t}", {}) for t in GGUF_TYPES]


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy imports stay out of the figure
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _rate(n: int, seconds: float) -> float:
    return n / seconds / 1e6


def _reference(name: str, params: dict, matrix: torch.Tensor, packed):
    """(label, quantize fn, dequantize fn) of the reference implementation of a format, or None."""
    if name.startswith("gguf:"):
        import gguf

        qtype = gguf.GGMLQuantizationType[name[5:]]
        array, blocks = matrix.numpy(), packed.data["blocks"].numpy()  # the same bytes gguf-py would decode
        quantize = (lambda: gguf.quants.quantize(array, qtype)) if name[5:] in TORCH_QUANTIZED else None
        return "gguf-py (numpy)", quantize, lambda: gguf.quants.dequantize(blocks, qtype)
    if name in ("mxfp4", "mxfp8"):
        from torchao.prototype.mx_formats.mx_tensor import MXTensor

        elem = torch.float4_e2m1fn_x2 if name == "mxfp4" else torch.float8_e4m3fn
        mx = MXTensor.to_mx(matrix, elem, 32)
        return "torchao", lambda: MXTensor.to_mx(matrix, elem, 32), lambda: mx.dequantize(torch.float32)
    if name == "nvfp4":
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

        def quantize():
            return NVFP4Tensor.to_nvfp4(matrix, per_tensor_scale=per_tensor_amax_to_scale(matrix.abs().amax()))

        nv = quantize()
        return "torchao", quantize, lambda: nv.dequantize(torch.float32)
    if name in ("nf4", "fp4"):
        import bitsandbytes.functional as bnbf

        codes, state = bnbf.quantize_4bit(matrix, blocksize=params.get("block_size", 64), quant_type=name)
        return (
            "bitsandbytes",
            lambda: bnbf.quantize_4bit(matrix, blocksize=params.get("block_size", 64), quant_type=name),
            lambda: bnbf.dequantize_4bit(codes, state),
        )
    return None


def time_formats(size: int = 4096, repeats: int = 3, progress=None) -> dict:
    """Throughput (millions of weights per second) of every format and its reference, plus the copy bound."""
    matrix = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    n = matrix.numel()
    # The copy the ratios are against allocates its output, as every quantize / dequantize call does; on this
    # project's VM that is bound by first-touch page faults. A copy into a buffer written before is the raw
    # memory bandwidth, recorded beside it.
    copy = _rate(n, best_seconds(lambda: matrix.clone(), repeats))
    target = torch.empty_like(matrix)
    copy_preallocated = _rate(n, best_seconds(lambda: target.copy_(matrix), repeats))
    rows: list[dict] = []
    for name, params, fmt, packed in _quantized_formats(matrix, progress, rows):
        quantize_s = best_seconds(lambda: fmt.quantize(matrix), repeats)
        dequantize_s = best_seconds(lambda: fmt.dequantize(packed), repeats)
        row = {
            "format": fmt.describe(),
            "bits_per_weight": fmt.bits_per_weight,
            "quantize_mw_s": round(_rate(n, quantize_s), 1),
            "dequantize_mw_s": round(_rate(n, dequantize_s), 1),
            "quantize_vs_copy": round(_rate(n, quantize_s) / copy, 3),
            "dequantize_vs_copy": round(_rate(n, dequantize_s) / copy, 3),
        }
        if name.startswith("gguf:"):
            qtype = name[5:]
            if ggml.available():  # quantlab's GGUF quantize is ggml's, on row slices over torch's threads
                single = best_seconds(lambda: ggml.quantize_rows(matrix, GGUF_TYPES[qtype][0], threads=1), repeats)
                row["ggml_single_thread_quantize_mw_s"] = round(_rate(n, single), 1)
                row["quantize_vs_ggml_single_thread"] = round(single / quantize_s, 2)
            if qtype in TORCH_QUANTIZED:  # the torch path (CUDA tensors, installs without ggml)
                blocks = matrix.reshape(-1, 32)
                torch_s = best_seconds(lambda: quantize_legacy(blocks, qtype), repeats)
                row["torch_quantize_mw_s"] = round(_rate(n, torch_s), 1)
            torch_d = best_seconds(lambda: dequantize_blocks(packed.data["blocks"], qtype), repeats)
            row["torch_dequantize_mw_s"] = round(_rate(n, torch_d), 1)
        reference = _reference(name, params, matrix, packed)
        if reference is not None:
            label, ref_quantize, ref_dequantize = reference
            row["reference"] = label
            if ref_quantize is not None:
                ref_q = best_seconds(ref_quantize, 1 if label.startswith("gguf-py") else repeats)
                row["reference_quantize_mw_s"] = round(_rate(n, ref_q), 1)
                row["quantize_vs_reference"] = round(ref_q / quantize_s, 2)
            ref_d = best_seconds(ref_dequantize, 1 if label.startswith("gguf-py") else repeats)
            row["reference_dequantize_mw_s"] = round(_rate(n, ref_d), 1)
            row["dequantize_vs_reference"] = round(ref_d / dequantize_s, 2)
        rows.append(row)
    return {
        "matrix": [size, size],
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "fused": fused.enabled(),  # whether the element-wise formats ran compiled (quantlab.formats.fused)
        "copy_mw_s": round(copy, 1),
        "copy_preallocated_mw_s": round(copy_preallocated, 1),
        "formats": rows,
    }


def sqnr_db(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σw² / Σ(w - ŵ)²)."""
    noise = float(((weight.double() - approx.double()) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((weight.double() ** 2).sum()) / noise)


def reference_model_matrices() -> list[tuple[str, torch.Tensor]]:
    """The shipped reference model's weight matrices, as (out, in) rows the way runtimes quantize them."""
    import torch

    model, _ = load_model(resolve_model(default_model()), dtype=torch.float32)
    matrices = []
    for name, p in model.named_parameters():
        if p.dim() == 3:  # fused experts, stored (experts, in, out): one (out, in) matrix per expert
            matrices += [(f"{name}[{e}]", p[e].detach().T.contiguous()) for e in range(p.shape[0])]
        elif p.dim() == 2 and "embed" not in name and "lm_head" not in name and "router" not in name:
            matrices.append((name, p.detach()))
    return matrices


def _quantized_formats(matrix: torch.Tensor, progress, rows: list[dict]):
    """(name, params, format, its packing of ``matrix``) for every benchmarked format; one that cannot run here (ggml not
    installed) becomes a skipped row of ``rows`` and the benchmark goes on."""
    for name, params in BENCH_FORMATS:
        fmt = get_format(name, **params)
        if progress:
            progress(fmt.describe())
        try:
            packed = fmt.quantize(matrix)
        except Exception as error:
            rows.append({"format": fmt.describe(), "skipped": str(error)})
            continue
        yield name, params, fmt, packed


def rate_distortion(progress=None) -> dict:
    """SQNR and stored bits per weight of every format on Gaussian and on the reference model's weights."""
    gaussian = torch.randn(1024, 4096, generator=torch.Generator().manual_seed(0))
    model = reference_model_matrices()
    rows: list[dict] = []
    for _name, _params, fmt, packed in _quantized_formats(gaussian, progress, rows):
        bits = packed.stored_bytes * 8 / gaussian.numel()
        signal = noise = 0.0
        model_bytes = model_values = 0
        for _, matrix in model:
            p = fmt.quantize(matrix)
            signal += float((matrix.double() ** 2).sum())
            noise += float(((fmt.dequantize(p).double() - matrix.double()) ** 2).sum())
            model_bytes += p.stored_bytes
            model_values += matrix.numel()
        rows.append(
            {
                "format": fmt.describe(),
                "bits_per_weight": round(bits, 3),
                "sqnr_gaussian_db": round(sqnr_db(gaussian, fmt.dequantize(packed)), 2),
                "gaussian_bound_db": round(6.02 * bits, 2),
                "model_bits_per_weight": round(model_bytes * 8 / model_values, 3),
                "sqnr_model_db": round(10 * math.log10(signal / noise), 2) if noise else math.inf,
            }
        )
    return {
        "gaussian": [1024, 4096],
        "model_matrices": len(model),
        "model_values": sum(m.numel() for _, m in model),
        "formats": rows,
    }


SPEED_COLUMNS = [
    ("quantize_mw_s", "quantize Mw/s"), ("dequantize_mw_s", "dequantize Mw/s"),
    ("quantize_vs_copy", "q / copy"), ("dequantize_vs_copy", "dq / copy"), ("reference", "reference"),
    ("quantize_vs_reference", "q vs ref"), ("dequantize_vs_reference", "dq vs ref"),
    ("ggml_single_thread_quantize_mw_s", "ggml 1T quantize Mw/s"), ("quantize_vs_ggml_single_thread", "q vs ggml 1T"),
    ("torch_quantize_mw_s", "torch quantize Mw/s"), ("torch_dequantize_mw_s", "torch dequantize Mw/s"),
]  # fmt: skip


def speed_markdown(result: dict) -> str:
    """The speed table as Markdown, as docs/formats.md records it."""
    lines = [
        "| format | " + " | ".join(title for _, title in SPEED_COLUMNS) + " |",
        "|---" * (len(SPEED_COLUMNS) + 1) + "|",
    ]
    for row in result["formats"]:
        cells = [
            str(row.get(key, "")) + ("x" if "_vs_" in key and "copy" not in key and key in row else "")
            for key, _ in SPEED_COLUMNS
        ]
        lines.append(f"| {row['format']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
