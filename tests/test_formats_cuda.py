"""On CUDA every format stores the same bytes and decodes to the same values as on the CPU (skips without a GPU).

GGUF types on CUDA take quantlab's torch path (ggml's CPU library is not used for device tensors), so this
also checks that path against the CPU one, which ggml and gguf-py check in test_formats_gguf.
"""

import pytest
import torch

from quantlab.formats import available_formats, get_format
from quantlab.formats.gguf import TORCH_QUANTIZED

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA_FORMATS = [n for n in available_formats() if not n.startswith("gguf:")] + [
    f"gguf:{t}" for t in sorted(TORCH_QUANTIZED)
]


@pytest.mark.parametrize("name", CUDA_FORMATS)
def test_cuda_equals_cpu(name):
    weight = torch.randn(256, 1024, generator=torch.Generator().manual_seed(3))
    weight[::17, ::29] *= 50
    fmt = get_format(name)
    on_cpu, on_gpu = fmt.quantize(weight), fmt.quantize(weight.cuda())
    for key, value in on_cpu.data.items():
        assert on_gpu.data[key].is_cuda, key
        assert torch.equal(on_gpu.data[key].cpu().view(torch.uint8), value.view(torch.uint8)), key
    assert torch.equal(fmt.dequantize(on_gpu).cpu(), fmt.dequantize(on_cpu))
