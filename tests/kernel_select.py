"""Kernel-table selection for tests that state bounds per arithmetic (cpu/kernels.h)."""

import contextlib


@contextlib.contextmanager
def kernel_table(name):
    """Run the CPU backend on one kernel table (cpu/kernels.h), then restore the previous one.
    `reference` is the exact arithmetic (dequantized weights, float activations) the HF parity
    levels are stated for; the default tables multiply quantized weights with 8-bit activations."""
    from aircache_cpp import _core

    before = _core._kernel_current()
    _core._kernel_set(name)
    try:
        yield
    finally:
        _core._kernel_set(before)


# 8-bit activations (the fast default tables, as llama.cpp) add this much relative logit error on
# the tiny random-weight test models on top of the weights' own quantization error (measured up
# to 8.2e-2, Q2_K; 3-6e-2 for the 32-element types; ~1e-3 for Q4_K..Q6_K); the exact reference
# arithmetic is held to the tight bounds.
ACT_Q8_REL_ERR = 0.12
