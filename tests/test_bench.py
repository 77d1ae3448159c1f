"""aircache-bench: runs on random models built in memory and prints every output format."""

import json
import subprocess


def bench(*args):
    return subprocess.run(["aircache-bench", *args], capture_output=True, text=True, timeout=300)


def test_bench_random_model_formats():
    r = bench("--random", "tiny", "--type", "q8_0", "-B", "1,2", "-n", "4", "-r", "2", "-t", "1",
              "--kv-policy", "full,aircache,snapkv", "--kv-budget", "0.25,0.5", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * (1 + 2 + 2)  # batch sizes x (full + 2 budgets x 2 policies)
    full = {r["batch"]: r for r in rows if r["policy"] == "full"}
    for row in rows:
        assert row["model"] == "tiny" and row["type"] == "Q8_0" and row["threads"] == 1 and row["device"] == "cpu"
        assert row["n_visual"] == 16 and row["n_prompt"] == 1 + 4 + 16 + 20
        assert row["decode_tps_seq"] > 0 and row["decode_tps_total"] >= row["decode_tps_seq"] * 0.99
        assert row["prefill_tps"] > 0 and row["peak_rss_mib"] > 0
        assert abs(row["prefill_ms"] - 1000 * row["n_prompt"] / row["prefill_tps"]) < 1e-2 * row["prefill_ms"] + 1e-3
        assert row["weight_mib"] > 0
        # allocated at the end: what is kept + the generated rows (the memory compaction freed given back)
        f = full[row["batch"]]
        assert row["kv_mib_allocated"] >= row["kv_mib_after"] > 0
        assert abs((row["kv_mib_allocated"] - row["kv_mib_after"]) - (f["kv_mib_allocated"] - f["kv_mib_after"])) < 1e-5
        if row["policy"] == "full":
            assert row["kv_mib_after"] == row["kv_mib_before"]
        else:
            assert row["kv_mib_after"] < row["kv_mib_before"]
            # speedup and the memory-traffic bound against the full row of the same batch size
            B, W = row["batch"], row["weight_mib"]
            assert abs(row["speedup"] - row["decode_tps_total"] / f["decode_tps_total"]) < 1e-3 * row["speedup"]
            bound = (W + B * f["kv_mib_before"]) / (W + B * row["kv_mib_after"])
            assert bound > 1 and abs(row["bound"] - bound) < 1e-3 * bound
    assert "[10/10]" in r.stderr  # the progress line
    md = bench("--random", "tiny", "-n", "2", "-r", "1", "-t", "1", "--n-visual", "16,32")
    assert md.returncode == 0 and md.stdout.startswith("| model |") and md.stdout.count("\n") == 2 + 4
    csv = bench("--random", "tiny", "-n", "2", "-r", "1", "-t", "1", "-o", "csv")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith("model,type,device,threads")


def test_bench_errors():
    assert bench().returncode == 0  # usage
    r = bench("--random", "huge")
    assert r.returncode == 1 and "unknown random model shape 'huge'" in r.stderr
    r = bench("--random", "tiny", "--n-visual", "10")
    assert r.returncode == 1 and "multiples" in r.stderr
    r = bench("--random", "tiny", "--kv-policy", "nope")
    assert r.returncode == 1 and "unknown KV policy" in r.stderr
    r = bench("--bogus")
    assert r.returncode == 2
    r = bench("--random", "tiny", "--device", "tpu")
    assert r.returncode == 1 and "unknown device 'tpu'" in r.stderr
