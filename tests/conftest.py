import os
import sys

import pytest

# tests/ holds shared fixture modules (gguf_fixtures.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gguf_fixtures import write_gguf  # noqa: E402


@pytest.fixture
def gguf_writer(tmp_path):
    counter = iter(range(10**6))

    def make(build, arch="llama", name=None):
        path = tmp_path / (name or f"f{next(counter)}.gguf")
        return write_gguf(path, arch, build)

    return make
