import os
import sys

import pytest

# tests/ holds shared fixture modules (gguf_fixtures.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def write_gguf(path, arch, build):
    """Write a GGUF file with gguf-py's GGUFWriter; `build(writer)` adds KVs and tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture
def gguf_writer(tmp_path):
    counter = iter(range(10**6))

    def make(build, arch="llama", name=None):
        path = tmp_path / (name or f"f{next(counter)}.gguf")
        return write_gguf(path, arch, build)

    return make
