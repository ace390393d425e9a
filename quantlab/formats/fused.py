"""Fusing a format's element-wise chain into one pass with ``torch.compile``, when the tensor is big enough.

A quantizer written in eager torch is a chain of 10-20 element-wise passes over the weight, each reading and
writing the whole tensor: far below the memory bandwidth. Inductor fuses the chain into one loop (MXFP4
quantize goes from ~0.2 to ~0.7 of a plain copy's bandwidth on the project's CPU, docs/formats.md). The fused
code computes exactly the same values: it performs the same float operations in the same order, only without
the intermediate tensors (``tests/test_formats_fused.py`` compares the two bit for bit).

Compilation costs a few seconds per shape, so only calls whose largest tensor argument holds at least
``FUSE_MIN_BYTES`` take the compiled path, with static shapes (a dynamic-shape kernel measured 2x slower). ``QUANTLAB_FUSE=0`` turns it off;
if compilation fails here (no C++ compiler, an unsupported device), quantlab warns once and stays eager.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

FUSE_MIN_BYTES = 1 << 20
# Each format, parameter set and weight shape is one compiled variant; a real model has a few dozen, more than
# dynamo's default of 8 per function (past the limit it would silently run eager).
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
_broken: list[str] = []  # the first compile error, once seen: every fused function goes eager after it
compiled_calls = 0  # how many calls took the compiled path (the tests check that it was really taken)


def enabled() -> bool:
    return os.environ.get("QUANTLAB_FUSE", "1") != "0" and not _broken


def fused(fn):
    """``fn`` compiled when its largest tensor argument holds at least ``FUSE_MIN_BYTES``, eager otherwise."""
    # emulate_precision_casts: without it inductor drops a round trip through float16 (x.half().float()) as a
    # no-op, and a scale that the format stores in float16 would be used unrounded.
    compiled = torch.compile(fn, dynamic=False, options={"emulate_precision_casts": True})

    @functools.wraps(fn)
    def run(tensor: torch.Tensor, *args, **kwargs):
        largest = max(a.nbytes for a in (tensor, *args) if isinstance(a, torch.Tensor))
        if largest < FUSE_MIN_BYTES or not enabled():
            return fn(tensor, *args, **kwargs)
        global compiled_calls
        try:
            result = compiled(tensor, *args, **kwargs)
            compiled_calls += 1
            return result
        except Exception as error:  # compile failures surface as several backend-specific exception types
            _broken.append(f"{type(error).__name__}: {error}".splitlines()[0])
            warnings.warn(
                f"quantlab: torch.compile failed ({_broken[0]}); formats run unfused (slower, same values)",
                stacklevel=2,
            )
            return fn(tensor, *args, **kwargs)

    return run
