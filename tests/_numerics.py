"""Tolerances of the float32 comparisons against recorded numbers, derived from the computation, not the last run.

Why results differ at all: the same float32 model on another x86-64 CPU runs other kernels (ATen's AVX-512, AVX2
or plain build; oneDNN's AVX-512, AVX2 or SSE4.1 convolutions), which sum in another order (SIMD width, blocking).
Only rounding differs. Reproduce other CPUs on this one with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` or
``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41`` (docs/DEVELOPING.md; .ci/run runs the numerics tests so).

The bound: a length-K float32 sum in another order differs by a random walk of K roundings, ~ sqrt(K) * u relative
to its magnitude (u = 2^-24, the float32 unit roundoff). Through D such layers in sequence the relative errors add,
again as a random walk: sqrt(D). Normalisation keeps every activation on the scale of the compared tensor, so the
largest absolute difference of a result is bounded by

    atol = C * sqrt(K * D) * u * max|ref|          (``float32_atol``)

K = the longest reduction on the path (e.g. 3*3*512 for a 3x3 conv of 512 channels), D = the number of layers
that reduce. C = 1: measured on the three code paths above, the golden tests use at most 0.26 of it (StyleGAN2
0.26, IR-SE50 and e4e 0.12, CLIP ViT 0.05; ``NUMERICS_LOG`` below writes the ratios). A wrong layer moves a result by a sizeable fraction of max|ref|
(10 % and more: a dropped SE block, a ReLU for a PReLU), far above the bound, so the golden tests keep their meaning;
the scratch checks that show it are in docs/DEVELOPING.md ("Numerics across CPUs").
"""
from __future__ import annotations

import math
import os

import torch

U32 = 2.0 ** -24   # float32 unit roundoff


def float32_atol(ref: torch.Tensor, k: int, depth: int = 1, c: float = 1.0) -> float:
    """Max-abs tolerance of a float32 result ``ref`` whose longest reduction has length ``k``, ``depth`` reducing
    layers deep (module docstring): c * sqrt(k * depth) * u * max|ref|."""
    assert k >= 1 and depth >= 1 and c > 0, (k, depth, c)
    return c * math.sqrt(k * depth) * U32 * float(ref.detach().abs().max())


def log_margin(diff: float, tol: float) -> None:
    """With $NUMERICS_LOG set, append test, difference, tolerance and their ratio (measuring margins on a CPU)."""
    if os.environ.get("NUMERICS_LOG"):
        with open(os.environ["NUMERICS_LOG"], "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            f.write(f"{test}\t{diff:.3g}\t{tol:.3g}\t{diff / tol if tol else float('inf'):.3f}\n")


def assert_close32(got: torch.Tensor, ref: torch.Tensor, k: int, depth: int = 1, c: float = 1.0) -> float:
    """Assert max|got - ref| <= float32_atol(ref, k, depth, c); returns the difference (for messages/tests)."""
    assert got.shape == ref.shape, (tuple(got.shape), tuple(ref.shape))
    diff = float((got.detach().double() - ref.detach().double()).abs().max())
    tol = float32_atol(ref, k, depth, c)
    log_margin(diff, tol)
    assert diff <= tol, (f"max abs diff {diff:.3g} > {tol:.3g} (= {c} * sqrt({k} * {depth}) * 2^-24 * max|ref| "
                         f"{float(ref.abs().max()):.3g})")
    return diff
