"""One defective file per class of defect: each is a FormatError (or UnsupportedError for a valid
file this runtime does not read) whose message names the file and the defect. The same table runs
through the C++ driver under AddressSanitizer + UBSan in CI (tests/cpp/test_driver.cpp)."""

import re
import subprocess

import pytest

import aircache_cpp as ac
import gguf_fixtures as fx

CASES = fx.malformed_cases()


def test_table_covers_the_defect_classes():
    names = {c.name for c in CASES}
    required = {
        "bad_magic", "version_0", "version_1", "version_4", "key_length_beyond_file", "array_count_2_62",
        "string_length_2_63", "duplicate_key", "alignment_wrong_type", "alignment_not_power_of_two",
        "tensor_name_too_long", "n_dims_0", "n_dims_5", "dim_zero", "dim_negative", "element_count_overflow",
        "byte_size_overflow_q8_0", "unknown_type_id", "offset_out_of_range", "overlapping_tensors",
        "duplicate_tensor_name", "data_section_truncated",
    }
    assert required <= names
    # truncated at every header field boundary (and inside the data section)
    assert sum(n.startswith("truncated_at_") for n in names) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rejected_with_a_message_naming_the_defect(tmp_path, case):
    path = tmp_path / f"{case.name}.gguf"
    path.write_bytes(case.data)
    exc = getattr(ac, case.error)
    with pytest.raises(ac.Error) as ei:
        ac.gguf_info(path)
    assert type(ei.value) is exc, f"expected {case.error}, got {type(ei.value).__name__}: {ei.value}"
    assert isinstance(ei.value, ValueError)
    msg = str(ei.value)
    assert msg.startswith(str(path) + ": "), msg
    assert re.search(case.pattern, msg), f"/{case.pattern}/ not in: {msg}"


@pytest.mark.parametrize("name", ["bad_magic", "version_4", "overlapping_tensors", "data_section_truncated",
                                  "array_count_2_62", "big_endian"])
def test_cli_reports_one_line(tmp_path, name):
    case = next(c for c in CASES if c.name == name)
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(case.data)
    r = subprocess.run(["aircache-cli", "info", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aircache-cli: error: " + str(path))
    assert re.search(case.pattern, lines[0])
