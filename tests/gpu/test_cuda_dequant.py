"""CUDA dequantization kernel against the CPU backend (the oracle). The kernel is compiled without
FMA contraction and shares the block formulas with the CPU (cpp/quant_blocks.h), so the tolerance
is zero: results must be bit-identical, for every supported type, NaN/Inf patterns included."""

import numpy as np
import pytest

import aircache_cpp as ac
import gguf_fixtures as fx


@pytest.mark.parametrize("type_name", fx.SUPPORTED_TYPES)
@pytest.mark.parametrize("n_blocks", [1, 3, 1000, 70001])  # odd sizes, and more blocks than one grid pass
def test_cuda_dequantize_equals_cpu(type_name, n_blocks):
    rng = np.random.default_rng(n_blocks)
    raw = fx.quant_blocks(type_name, n_blocks, rng, "random")
    cpu = ac.dequantize(raw, type_name)
    gpu = ac.cuda_dequantize(raw, type_name)
    assert gpu.shape == cpu.shape
    nan = np.isnan(cpu)
    assert np.array_equal(np.isnan(gpu), nan)
    assert np.array_equal(gpu.view(np.uint32)[~nan], cpu.view(np.uint32)[~nan])


def test_cuda_rejects_unsupported_type():
    with pytest.raises(ac.UnsupportedError, match="IQ2_XXS"):
        ac.cuda_dequantize(np.zeros(66, np.uint8), "IQ2_XXS")
