"""GGUF block types against gguf-py (llama.cpp's Python package) and, where installed, ggml's own quantizer."""

import math

import numpy as np
import pytest
import torch

from quantlab.errors import UserError
from quantlab.formats import Packed, get_format
from quantlab.formats.gguf import GGUF_TYPES, TORCH_QUANTIZED, dequantize_blocks, quantize_legacy

gguf = pytest.importorskip("gguf")


def _ggml_available():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_ggml = pytest.mark.skipif(not _ggml_available(), reason="llama-cpp-python (quantlab[gguf]) not installed")


def _weights(shape, seed, kind):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if kind == "outliers":
        w[torch.rand(shape, generator=g) < 0.01] *= 40
    elif kind == "zero_blocks":
        w.reshape(-1, 32)[::4] = 0
    elif kind == "negative":
        w = -w.abs()
    elif kind == "ties":  # values on exact grid midpoints stress the rounding rules
        w = torch.randint(-16, 17, shape, generator=g).float() / 4
    elif kind == "signed_zeros":  # blocks of -0.0, and blocks where +m and -m tie for the largest magnitude
        w.reshape(-1, 32)[::3] = -0.0
        w.reshape(-1, 32)[1::3, 5] = -9.0
        w.reshape(-1, 32)[1::3, 7] = 9.0
    elif kind == "subnormal":  # scales whose reciprocal overflows float32 (ggml's int8 casts see inf)
        w = w * 1e-38
    return w


KINDS = ["gaussian", "outliers", "zero_blocks", "negative", "ties", "signed_zeros", "subnormal"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4, 256), (3, 512), (1, 4096)])
@pytest.mark.parametrize("qtype", sorted(TORCH_QUANTIZED))
def test_torch_quantizers_equal_gguf_py(qtype, shape, kind):
    w = _weights(shape, seed=len(kind) + shape[0], kind=kind)
    fmt = get_format(f"gguf:{qtype}")
    blocks = quantize_legacy(w.reshape(-1, 32), qtype).reshape(shape[0], -1)  # the torch path, always
    packed = Packed(f"gguf:{qtype}", shape, {"blocks": blocks}, notes={"ggml_type": qtype})
    with np.errstate(all="ignore"):  # the subnormal kind overflows gguf-py's reciprocal, as it does ggml's
        reference = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[qtype])
    if qtype in ("Q4_0", "Q5_0"):
        # gguf-py's numpy port differs from ggml in one place: in a block of only -0.0 it keeps -0 as the
        # block's signed maximum, so d = -0 / -8 = +0, where ggml's loop keeps its initial +0 (d = -0).
        # quantlab follows ggml (test_blocks_equal_ggml_quantize_chunk); both decode to zeros.
        negative_zero_blocks = (w.reshape(-1, 32) == 0).all(dim=1) & torch.signbit(w.reshape(-1, 32)).all(dim=1)
        reference = reference.reshape(-1, reference.shape[-1] // (shape[1] // 32)).copy()
        assert (reference[negative_zero_blocks.numpy(), :2] == [0, 0]).all()
        reference[negative_zero_blocks.numpy(), 1] = 0x80  # the sign bit of ggml's float16 d = -0
        reference = reference.reshape(shape[0], -1)
    assert blocks.dtype == torch.uint8 and np.array_equal(blocks.numpy(), reference)
    stored = fmt.quantize(w).data["blocks"]  # ggml's, where installed
    assert stored.dtype == torch.uint8 and np.array_equal(stored.numpy(), reference)
    expected = gguf.quants.dequantize(reference, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(fmt.dequantize(packed).numpy(), expected)


@pytest.mark.parametrize("path", ["format", "torch"])
@pytest.mark.parametrize("qtype", sorted(GGUF_TYPES))
def test_dequantize_equals_gguf_py_on_arbitrary_blocks(qtype, path):
    """Any byte pattern (random bytes) decodes like gguf-py: through the format (ggml's dequantize_row_* where
    installed) and through quantlab's torch code (CUDA tensors, no extra)."""
    _, block, size = GGUF_TYPES[qtype]
    raw = np.random.default_rng(len(qtype)).integers(0, 256, size=(200, size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType[qtype]).reshape(200, block)
    packed = Packed(f"gguf:{qtype}", (200, block), {"blocks": torch.from_numpy(raw)}, notes={"ggml_type": qtype})
    if path == "format":
        got = get_format(f"gguf:{qtype}").dequantize(packed).numpy()
    else:
        got = dequantize_blocks(torch.from_numpy(raw), qtype).numpy()
    finite = np.isfinite(expected)  # float16 NaN/Inf bit patterns in the scale fields make NaN rows
    assert finite.mean() > 0.85
    assert np.array_equal(got[finite], expected[finite])
    assert np.array_equal(np.isfinite(got), finite)


@needs_ggml
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4, 256), (3, 512), (2, 4096)])
@pytest.mark.parametrize("qtype", sorted(GGUF_TYPES))
def test_blocks_equal_ggml_quantize_chunk(qtype, shape, kind):
    from quantlab.formats import ggml

    w = _weights(shape, seed=11, kind=kind)
    fmt = get_format(f"gguf:{qtype}")
    packed = fmt.quantize(w)
    type_id = GGUF_TYPES[qtype][0]
    reference = ggml.quantize_rows(w, type_id, threads=1)
    assert torch.equal(packed.data["blocks"], reference)
    if qtype in TORCH_QUANTIZED:  # the torch implementation against ggml itself
        assert torch.equal(quantize_legacy(w.reshape(-1, 32), qtype).reshape(shape[0], -1), reference)
    expected = gguf.quants.dequantize(packed.data["blocks"].numpy(), gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(fmt.dequantize(packed).numpy(), expected)


@needs_ggml
@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_importance_weights_reach_ggml(qtype):
    from quantlab.formats import ggml

    w = _weights((4, 512), seed=5, kind="outliers")
    importance = torch.rand(512, generator=torch.Generator().manual_seed(1)) ** 4
    fmt = get_format(f"gguf:{qtype}")
    with_importance = fmt.quantize(w, importance)
    assert torch.equal(with_importance.data["blocks"], ggml.quantize_rows(w, GGUF_TYPES[qtype][0], importance))
    # ggml switches to its weighted search when given an importance matrix: the blocks change.
    assert not torch.equal(with_importance.data["blocks"], fmt.quantize(w).data["blocks"])


def _llama_cpp_error(qtype):
    # llama.cpp's tests/test-quantize-fns.cpp: 4096 values of 0.1 + 2 cos(i); error = sqrt(sum sq err) / n.
    n = 4096
    x = torch.tensor([0.1 + 2 * math.cos(i) for i in range(n)], dtype=torch.float32).reshape(1, n)
    fmt = get_format(f"gguf:{qtype}")
    return float(((fmt.roundtrip(x) - x) ** 2).sum().sqrt()) / n


BOUNDS = {"Q2_K": 0.0075, "Q3_K": 0.0040}


@pytest.mark.parametrize(
    "qtype",
    [t for t in sorted(GGUF_TYPES) if t in TORCH_QUANTIZED]
    + [pytest.param(t, marks=needs_ggml) for t in sorted(GGUF_TYPES) if t not in TORCH_QUANTIZED],
)
def test_llama_cpp_error_bounds(qtype):
    assert _llama_cpp_error(qtype) <= BOUNDS.get(qtype, 0.002)


def test_rows_not_a_multiple_of_the_block():
    w = torch.randn(4, 128)
    with pytest.raises(UserError, match=r"gguf:Q4_K: tensor of shape \(4, 128\).*multiple of 256"):
        get_format("gguf:Q4_K").quantize(w)
    packed = get_format("gguf:Q4_K", fallback=True).quantize(w)
    assert packed.fallback.startswith("Q4_K -> Q5_0")
    reference = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q5_0)
    assert np.array_equal(packed.data["blocks"].numpy(), reference)
    assert np.array_equal(quantize_legacy(w.reshape(-1, 32), "Q5_0").reshape(4, -1).numpy(), reference)
    assert np.array_equal(
        get_format("gguf:Q4_K").dequantize(packed).numpy(),
        gguf.quants.dequantize(reference, gguf.GGMLQuantizationType.Q5_0),
    )


def test_mxfp4_gguf_and_ocp_differ_only_on_ties():
    """GGUF MXFP4 and OCP MXFP4 (floor rule) share the scale and the grid; they differ in rounding ties.

    ggml takes the first nearest grid point (ties toward zero, since the grid is ordered by magnitude); OCP /
    torchao round ties to even. In units of the block scale, the tie points that differ are 0.75 (ggml 0.5,
    OCP 1), 1.75 (1.5 vs 2) and 3.5 (3 vs 4); 0.25, 1.25, 2.5 and 5 agree.
    """
    ocp, ggml_mx = get_format("mxfp4"), get_format("gguf:MXFP4")
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ocp.roundtrip(w), ggml_mx.roundtrip(w))  # no exact ties in random data
    # A block with amax 6 has scale 1 (floor(log2 6) - 2 = 0); put every tie point in it.
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] * 4).reshape(1, 32)
    ties = torch.cat([ties, -ties])
    got_ocp, got_ggml = ocp.roundtrip(ties)[0, :8], ggml_mx.roundtrip(ties)[0, :8]
    assert got_ocp.tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert got_ggml.tolist() == [6.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    assert torch.equal(ocp.roundtrip(ties)[1], -ocp.roundtrip(ties)[0])
    assert torch.equal(ggml_mx.roundtrip(ties)[1], -ggml_mx.roundtrip(ties)[0])
    # Same scale byte in both layouts.
    assert torch.equal(ocp.quantize(w).data["scale_e8m0"], ggml_mx.quantize(w).data["blocks"][:, ::17].reshape(-1))
