import pytest

import aircache_cpp as ac


def pytest_collection_modifyitems(config, items):
    """Every test under tests/gpu needs a usable CUDA device; without one they skip with one reason."""
    if ac.cuda_available():
        return
    reason = ("no CUDA build" if not ac.build_info()["cuda"] else "no usable CUDA device/driver on this machine")
    for item in items:
        if "tests/gpu" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))
