"""Formats against the implementations users deploy: torch's float casts, torchao's MX / NVFP4 emulation,
bitsandbytes' NF4 / FP4, and hand-worked integer grids."""

import pytest
import torch

from quantlab.errors import UserError
from quantlab.formats import get_format


def _weights(shape, seed, kind):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if kind == "outliers":
        w[torch.rand(shape, generator=g) < 0.01] *= 50
    elif kind == "zero_blocks":
        flat = w.reshape(-1)
        for start in range(0, flat.numel() - 31, 96):  # every third whole block of 32 values
            flat[start : start + 32] = 0
    elif kind == "negative":
        w = -w.abs()
    elif kind == "tiny":
        w = w * 1e-30
    return w


KINDS = ["gaussian", "outliers", "zero_blocks", "negative", "tiny"]
SHAPES = [(64, 256), (3, 96), (8, 4096)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8"])
def test_mx_equals_torchao(fmt, rule, shape, kind):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    w = _weights(shape, seed=hash((shape, kind)) % 1000, kind=kind)
    elem = torch.float4_e2m1fn_x2 if fmt == "mxfp4" else torch.float8_e4m3fn
    reference = mx.MXTensor.to_mx(w, elem, 32, scaling_mode=ScaleCalculationMode[rule.upper()])
    ours = get_format(fmt, scale_rule=rule).quantize(w)
    assert torch.equal(ours.data["scale_e8m0"], reference.scale.view(torch.uint8).reshape(-1))
    assert torch.equal(ours.data["codes"].view(torch.uint8), reference.qdata.view(torch.uint8).reshape(-1))
    expected = reference.dequantize(torch.float32)
    got = get_format(fmt, scale_rule=rule).dequantize(ours)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_nvfp4_equals_torchao(shape, kind):
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    w = _weights(shape, seed=7, kind=kind)
    tensor_scale = nv.per_tensor_amax_to_scale(w.abs().amax())
    reference = nv.NVFP4Tensor.to_nvfp4(w, per_tensor_scale=tensor_scale)
    ours = get_format("nvfp4").quantize(w)
    assert torch.equal(ours.data["codes"], reference.qdata.view(torch.uint8).reshape(-1))
    assert torch.equal(ours.data["scale_e4m3"].view(torch.uint8), reference.scale.view(torch.uint8).reshape(-1))
    assert torch.equal(get_format("nvfp4").dequantize(ours), reference.dequantize(torch.float32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 256), (3, 97), (1, 4096)])
@pytest.mark.parametrize("block_size", [64, 128])
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_four_bit_equals_bitsandbytes(fmt, block_size, shape, kind):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    w = _weights(shape, seed=3, kind=kind)
    ref_codes, state = bnbf.quantize_4bit(w, blocksize=block_size, quant_type=fmt)
    ours = get_format(fmt, block_size=block_size).quantize(w)
    assert torch.equal(ours.data["codes"], ref_codes.reshape(-1))
    assert torch.equal(ours.data["absmax"], state.absmax)
    expected = bnbf.dequantize_4bit(ref_codes, state)
    assert torch.equal(get_format(fmt, block_size=block_size).dequantize(ours), expected)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
@pytest.mark.parametrize("fmt,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
@pytest.mark.parametrize("shape", [(64, 256), (300, 200)])
def test_fp8_equals_torch_cast_with_stated_scales(fmt, dtype, granularity, shape):
    w = _weights(shape, seed=1, kind="outliers")
    fp8 = get_format(fmt, granularity=granularity)
    packed = fp8.quantize(w)
    top = torch.finfo(dtype).max
    # The stated scales, computed independently: amax / max over each group.
    if granularity == "tensor":
        scale = torch.full(shape, float(w.abs().max()) / top)
    elif granularity == "channel":
        scale = (w.abs().amax(1, keepdim=True) / top).expand(shape)
    else:
        scale = torch.empty(shape)
        for i in range(0, shape[0], 128):
            for j in range(0, shape[1], 128):
                scale[i : i + 128, j : j + 128] = w[i : i + 128, j : j + 128].abs().max() / top
    expected = (w / scale).clamp(-top, top).to(dtype).float() * scale
    assert torch.equal(fp8.dequantize(packed), expected)
    assert packed.data["codes"].dtype == dtype


def test_integer_grid_worked_by_hand():
    w = torch.tensor([[-1.0, 0.2, 0.5, 0.75]])
    sym = get_format("int2", symmetric=True).quantize(w)
    # absmax 1: scale = 2/3 (fp16), zero = 2; codes round(w/scale)+2 clamped to [0, 3].
    s = float(torch.tensor(2 / 3).half())
    assert get_format("int2").codes(sym).tolist() == [[[0, 2, 3, 3]]]
    assert sym.data["codes"].tolist() == [0b11111000]  # little-endian 2-bit stream of 0, 2, 3, 3
    assert torch.equal(get_format("int2").dequantize(sym), torch.tensor([[-2 * s, 0, s, s]]))
    asym = get_format("int2", symmetric=False).quantize(w)
    # min -1, max 0.75: scale = 1.75/3, zero = round(1/scale) = 2.
    s = float(torch.tensor(1.75 / 3).half())
    assert asym.data["zero"].tolist() == [[2]]
    assert get_format("int2", symmetric=False).codes(asym).tolist() == [[[0, 2, 3, 3]]]


@pytest.mark.parametrize("count", [64, 63])
@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_stream_equals_a_little_endian_integer(bits, count):
    """The stream is the little-endian bytes of Σ code_i · 2^(i·bits), computed with Python integers."""
    from quantlab.formats.integer import pack_bits, unpack_bits

    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits))
    number = sum(int(c) << (i * bits) for i, c in enumerate(codes))
    expected = list(number.to_bytes((count * bits + 7) // 8, "little"))
    assert pack_bits(codes, bits).tolist() == expected
    assert unpack_bits(torch.tensor(expected, dtype=torch.uint8), bits, count).tolist() == codes.tolist()


@pytest.mark.parametrize("bits", range(2, 9))
def test_integer_error_within_half_a_step(bits):
    w = _weights((16, 128), seed=bits, kind="gaussian")
    for symmetric in (True, False):
        fmt = get_format(f"int{bits}", group_size=32, symmetric=symmetric)
        packed = fmt.quantize(w)
        step = packed.data["scale"].float().repeat_interleave(32, dim=1).reshape(16, 128)
        error = (fmt.dequantize(packed) - w).abs()
        # Half a step, plus what the float16 rounding of the stored scale (relative error <= 2^-11) moves a
        # grid point of magnitude |w|.
        assert (error <= 0.5 * step + 2**-10 * w.abs() + 1e-6).all()


def test_bad_shapes_and_values_are_one_clear_line():
    with pytest.raises(UserError, match=r"shape \(4, 30\).*multiple of 32"):
        get_format("mxfp4").quantize(torch.randn(4, 30))
    with pytest.raises(UserError, match="NaN"):
        get_format("nf4").quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(UserError, match="unknown format 'fp3'"):
        get_format("fp3")
    with pytest.raises(UserError, match="scale_rule"):
        get_format("mxfp4", scale_rule="nearest")
