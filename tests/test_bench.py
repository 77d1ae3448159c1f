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


MIB = 1048576.0


def test_bench_membw_and_effective_bandwidth():
    r = bench("--random", "tiny", "-B", "1,2", "-n", "4", "-r", "1", "-t", "1", "--kv-policy", "full,aircache",
              "--membw", "--membw-mib", "64", "--membw-cache-mib", "8", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 4
    for row in rows:
        # the probe: one per thread count, on every row
        assert row["membw_gbps"] > 0 and row["membw_cache_gbps"] > 0
        assert row["membw_gbps"] == rows[0]["membw_gbps"]
        # one decode step reads the weights and every sequence's kept KV (the bound's W and KV)
        step = row["weight_mib"] + row["batch"] * row["kv_mib_after"]
        assert abs(row["decode_step_mib"] - step) < 1e-5 * step
        eff = row["decode_step_mib"] * MIB * row["decode_tps_seq"] / 1e9
        assert row["eff_bw_gbps"] > 0 and abs(row["eff_bw_gbps"] - eff) < 1e-3 * eff + 1e-4
        pct = 100 * row["eff_bw_gbps"] / row["membw_gbps"]
        assert abs(row["eff_bw_pct"] - pct) < 1e-3 * pct + 2e-3
        # this configuration's own peak RSS, from the RSS at its start
        assert 0 < row["rss_start_mib"] <= row["peak_rss_mib"]
    # the full row of a batch reads B x the whole prompt's KV, the compressed one less
    by = {(x["batch"], x["policy"]): x for x in rows}
    assert by[(2, "aircache")]["decode_step_mib"] < by[(2, "full")]["decode_step_mib"]
    # without the probe: effective bandwidth still, no % of it
    r = bench("--random", "tiny", "-n", "2", "-r", "1", "-t", "1", "-o", "json")
    assert r.returncode == 0, r.stderr
    for row in json.loads(r.stdout):
        assert row["membw_gbps"] == 0 and row["eff_bw_pct"] == 0 and row["eff_bw_gbps"] > 0
    md = bench("--random", "tiny", "-n", "2", "-r", "1", "-t", "1", "--membw", "--membw-mib", "32",
               "--membw-cache-mib", "0")
    assert md.returncode == 0, md.stderr
    assert "| eff GB/s | % probe |" in md.stdout.splitlines()[0]
    assert "membw probe, 1 threads:" in md.stdout and "cache-sized" not in md.stdout


def test_bench_prefill_copy_matches_separate_prefills():
    def rows(mode, *extra):
        r = bench("--random", "tiny", "-B", "1,3", "-n", "6", "-r", "2", "-t", "1", "--kv-policy",
                  "full,aircache,snapkv", "--kv-budget", "0.25", "--prefill-mode", mode, *extra, "-o", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    for extra in ((), ("--kv-selection", "kv_head")):
        same, copy = rows("same", *extra), rows("copy", *extra)
        assert len(same) == len(copy) == 6
        for s, c in zip(same, copy):
            assert (s["batch"], s["policy"]) == (c["batch"], c["policy"])
            assert s["prefill_mode"] == "same" and c["prefill_mode"] == "copy"
            # the copied caches decode the same tokens and hold (and allocate) the same KV
            assert s["decode_digest"] == c["decode_digest"]
            for k in ("n_prompt", "kv_mib_after", "kv_mib_before", "kv_mib_allocated", "decode_step_mib"):
                assert s[k] == c[k], k
            assert c["prefill_tps"] > 0 and c["encode_ms"] > 0
    # `each` (every sequence its own prompt) is the default; B = 1: every mode is one prompt
    each, default = rows("each"), json.loads(bench("--random", "tiny", "-B", "1,3", "-n", "6", "-r", "2", "-t", "1",
                                                   "--kv-policy", "full,aircache,snapkv", "--kv-budget", "0.25",
                                                   "-o", "json").stdout)
    assert [x["decode_digest"] for x in each] == [x["decode_digest"] for x in default]
    assert all(x["prefill_mode"] == "each" for x in default)


def test_bench_new_flag_errors():
    for args, msg in ((("--prefill-mode", "twice"), "--prefill-mode: each, same or copy"),
                      (("--membw-mib", "0"), "--membw-mib"),
                      (("--membw-mib", "lots"), "--membw-mib"),
                      (("--membw-cache-mib", "-1"), "--membw-cache-mib")):
        r = bench("--random", "tiny", "-n", "2", *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_interleave():
    common = ("--random", "tiny", "-B", "1,2", "-n", "5", "-t", "1", "--kv-policy", "full,aircache,snapkv",
              "--kv-budget", "0.25", "--prefill-mode", "copy", "-o", "json")
    r = bench(*common, "-r", "1")
    il = bench(*common, "-r", "1", "--interleave", "--membw", "--membw-mib", "256", "--membw-cache-mib", "0")
    il3 = bench(*common, "-r", "3", "--interleave")
    for x in (r, il, il3):
        assert x.returncode == 0, x.stderr
    r, il, il3 = json.loads(r.stdout), json.loads(il.stdout), json.loads(il3.stdout)
    assert len(r) == len(il) == len(il3) == 6
    for a, b, c in zip(r, il, il3):
        assert (a["batch"], a["policy"]) == (b["batch"], b["policy"]) == (c["batch"], c["policy"])
        # one prefill per configuration, in the same order: the same prompts, KV and tokens
        assert a["decode_digest"] == b["decode_digest"]
        for k in ("n_prompt", "kv_mib_after", "kv_mib_before", "kv_mib_allocated"):
            assert a[k] == b[k] == c[k], k
        # later rounds decode again from the prefilled state (the bench checks: the same tokens each round)
        assert c["decode_digest"] != a["decode_digest"] and c["decode_tps_seq"] > 0
        assert b["membw_gbps"] > 0 and b["membw_cache_gbps"] == 0 and b["eff_bw_pct"] > 0
    # a group's rows share its peak RSS (its configurations' caches live together)
    for B in (1, 2):
        g = [x for x in il if x["batch"] == B]
        assert len({x["peak_rss_mib"] for x in g}) == 1 and g[0]["peak_rss_mib"] >= g[0]["rss_start_mib"] > 0
        assert g[0]["peak_rss_mib"] < 200  # read before the probe's 256 MiB buffer (tiny itself: a few MiB)


def test_bench_kv_types():
    """-ctk / -ctv: the cache's type in every output (kv_type), its bytes the blocks' share of f16's
    (llava-79m: head_dim 64; K q8_0 68 + V q4_0 36 bytes per row against 128 + 128); a shape whose
    head dimension the blocks do not divide is a one-line error (after the progress line)."""
    rows = {}
    for kv in (["--kv-type", "f16"], ["-ctk", "q8_0", "-ctv", "q4_0"]):
        r = bench("--random", "llava-79m", "-n", "2", "-r", "1", "-t", "1", "--kv-policy", "full", "-o", "json", *kv)
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)[0]
        rows[row["kv_type"]] = row
    assert set(rows) == {"f16", "q8_0/q4_0"}
    ratio = rows["q8_0/q4_0"]["kv_mib_before"] / rows["f16"]["kv_mib_before"]
    assert abs(ratio - (68 + 36) / 256) < 1e-6, ratio
    csv = bench("--random", "llava-79m", "-n", "2", "-r", "1", "-t", "1", "--kv-policy", "full", "-o", "csv", "-ctk", "q8_0")
    assert csv.returncode == 0 and csv.stdout.splitlines()[1].endswith(",q8_0/f16")
    bad = bench("--random", "tiny", "-n", "2", "-r", "1", "--kv-type", "q8_0")
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("aircache-bench: error:")]
    assert bad.returncode == 1 and len(errors) == 1 and "multiple of 32" in errors[0]
