"""The installed package: import, build information, and the executables on PATH."""

import shutil
import subprocess

import aircache_cpp as ac


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def test_build_info_fields():
    b = ac.build_info()
    assert b["version"] == ac.__version__
    assert isinstance(b["cuda"], bool)
    for key in ("compiler", "build_type", "cuda_compiler", "cuda_architectures", "simd_compiled", "simd_cpu", "system"):
        assert key in b
    if b["cuda"]:
        assert b["cuda_compiler"].startswith("NVCC")
        assert b["cuda_architectures"]
        assert b["cuda_gemm"].startswith(("cuBLAS", "built-in kernels"))
    assert isinstance(b["simd_cpu"], list)


def test_cuda_available_is_consistent():
    avail = ac.cuda_available()
    assert isinstance(avail, bool)
    assert avail == (ac.cuda_device_count() > 0)
    if not ac.build_info()["cuda"]:
        assert not avail


def test_exceptions_are_value_errors():
    for exc in (ac.FormatError, ac.UnsupportedError, ac.InputError):
        assert issubclass(exc, ValueError)
        assert issubclass(exc, ac.Error)


def test_executables_on_path():
    assert shutil.which("aircache-cli"), "aircache-cli is not on PATH after pip install"
    assert shutil.which("aircache-bench"), "aircache-bench is not on PATH after pip install"


def test_cli_version_matches_build_info():
    r = run("aircache-cli", "--version")
    assert r.returncode == 0
    assert r.stdout == ac.build_info_text()
    assert f"aircache.cpp {ac.__version__}" in r.stdout
    assert ("cuda:         built" in r.stdout) == ac.build_info()["cuda"]


def test_cli_help_and_usage_errors():
    r = run("aircache-cli", "--help")
    assert r.returncode == 0 and "info FILE" in r.stdout and "--n-predict" in r.stdout
    r = run("aircache-cli", "--bogus")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown option '--bogus'" in r.stderr
    r = run("aircache-cli", "info")
    assert r.returncode == 2 and "missing FILE" in r.stderr


def test_bench_help():
    r = run("aircache-bench", "--help")
    assert r.returncode == 0 and "usage: aircache-bench" in r.stdout
    r = run("aircache-bench", "-m", "x.gguf")
    assert r.returncode == 1 and r.stderr.startswith("aircache-bench: error: cannot open 'x.gguf'")
