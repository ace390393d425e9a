"""The fused (torch.compile) path of the element-wise formats computes exactly what the eager path computes.

The eager path is the one tested against torchao / bitsandbytes / torch casts in test_formats_reference; here
a matrix just large enough to take the compiled path, full of the cases where a reordered or approximated float
operation would show (outliers, all-zero and negative-only blocks, exact rounding ties, tiny values near the
subnormal range), must give the same stored bytes and the same dequantized values both ways.
"""

import pytest
import torch

from quantlab.formats import fused, get_format

FUSED_FORMATS = [
    ("mxfp4", {"scale_rule": "floor"}),
    ("mxfp4", {"scale_rule": "rceil"}),
    ("mxfp8", {"scale_rule": "even"}),
    ("nvfp4", {}),
    ("fp8_e4m3", {"granularity": "channel"}),
    ("fp8_e5m2", {"granularity": "block"}),
    ("int4", {"group_size": 32, "symmetric": False}),
    ("int3", {"group_size": 64, "symmetric": True}),
]


def hard_matrix() -> torch.Tensor:
    rows, cols = 1024, 4096  # 16 MiB of weights; every format's codes exceed fused.FUSE_MIN_BYTES
    generator = torch.Generator().manual_seed(7)
    w = torch.randn(rows, cols, generator=generator)
    w[::97, ::31] *= 300.0  # outliers
    w[1, :64] = 0.0  # all-zero blocks and groups
    w[2] = -w[2].abs()  # a negative-only row
    w[3, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4)  # E2M1 ties at scale 1
    w[4] = w[4] * 1e-38  # scales near and below the smallest normal float32
    w[5, :32] = -0.0
    return w


@pytest.mark.parametrize("name,params", FUSED_FORMATS, ids=[f"{n}-{p}" for n, p in FUSED_FORMATS])
def test_fused_path_equals_eager(name, params, monkeypatch):
    fmt, weight = get_format(name, **params), hard_matrix()
    before = fused.compiled_calls
    packed = fmt.quantize(weight)
    values = fmt.dequantize(packed)
    assert fused.compiled_calls == before + 2, "both quantize and dequantize must take the compiled path"
    assert not fused._broken

    monkeypatch.setenv("QUANTLAB_FUSE", "0")
    eager = fmt.quantize(weight)
    assert packed.data.keys() == eager.data.keys()
    for key in packed.data:
        a, b = packed.data[key], eager.data[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), key  # bytes, so that NaN/-0 count too
    assert torch.equal(values.view(torch.int32), fmt.dequantize(eager).view(torch.int32))


def test_small_tensors_stay_eager():
    before = fused.compiled_calls
    get_format("mxfp4").roundtrip(torch.randn(64, 256))
    assert fused.compiled_calls == before


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4"])
def test_fused_gguf_legacy_equals_eager(qtype):
    """The fused torch quantizer of the legacy GGUF types (used for large tensors) writes the eager path's
    bytes, which test_formats_gguf checks against ggml and gguf-py; including blocks where +m and -m tie for
    the largest magnitude, which the fused kernel leaves to an exact fix-up."""
    from quantlab.formats.gguf import quantize_legacy, quantize_legacy_fused

    blocks = hard_matrix().reshape(-1, 32)
    blocks[10, 3], blocks[10, 9] = -5.0, 5.0  # tie, negative first: ggml's d is negative
    blocks[11, 3], blocks[11, 9] = 5.0, -5.0  # tie, positive first
    blocks[10, :3] = blocks[10, 4:9] = blocks[11, :3] = 0.0
    before = fused.compiled_calls
    got = quantize_legacy_fused(blocks, qtype)
    assert fused.compiled_calls == before + 1
    assert got.dtype == torch.uint8 and torch.equal(got, quantize_legacy(blocks, qtype))
