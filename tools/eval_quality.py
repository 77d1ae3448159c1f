#!/usr/bin/env python3
"""Quality of visual KV compression on the demo task: key-token accuracy versus KV budget, every
policy, both protocols, through the C++ runtime; free greedy generation's exact answers.

    python tools/eval_quality.py [--hf models/demo-hf] [--gguf DIR] [--limit N] [--generate N] [-t THREADS]
        [--valset N] [--out docs/quality.md] [--plot docs/quality.png] [--json FILE]
    python tools/eval_quality.py --model qwen2vl [--generate N] [--out docs/quality-qwen2vl.md] ... (tools/eval_qwen.py's options:
        the second demo model's four protocols)

For every held-out question (tools/scenes/testset; `--valset N`: N scenes from the generator's
validation seeds instead, for design work) and protocol:
  question-aware  prompt = image + question (compressed), then the answer teacher-forced;
  follow-up       prompt = image + "Look at the image." (compressed), then the fixed reply, the
                  question and the answer teacher-forced over the compacted cache.
The score is the key word (after the answer's lead-in, so it is computed over the compacted
cache): correct when the runtime's argmax at its position is the key token. One prefill per
question serves every policy and budget (Model.evaluate_policies: the union of the statistics,
each setting compresses a copy of the cache), which also reports the cache hit rate and whether
the whole answer and its </s> are the argmax (`exact (tf)`: greedy decoding would write exactly
the answer and stop).

Settings: `full`; every policy (the wave-1 ones and `mosaic`) at budgets 0.5, 0.2, 0.1, 0.05, 0.02,
0.01 in `visual` scope; the modality-blind baselines and VL-Cache in `all` scope at 0.1 and 0.05.
Also: the runtime's full-cache answers against the HF model's (teacher-forced argmax, >= 99%
agreement expected); free greedy generation, exact match of the answer text, for every policy at
0.2 / 0.1 / 0.05 and full on the first `--generate` questions (0 = all): question-aware through
Model.generate, follow-up as a real Session (the first turn compressed and answered freely, the
question as the second turn); the hit rate's correlation with accuracy. Writes a markdown table
and a PNG plot; `--json` the raw results (keys as before; fields added: exact_tf, exact_tf_types,
first_reply_tf, free_exact, free_first_reply, free_n, hit_correct_corr).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import aircache_cpp as ac  # noqa: E402

WAVE1 = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache", "aircache"]
POLICIES = WAVE1 + ["mosaic"]
BUDGETS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
ALL_SCOPE = ["random", "streaming", "h2o", "snapkv", "pyramidkv", "vlcache"]
ALL_SCOPE_BUDGETS = [0.1, 0.05]
GEN_BUDGETS = [0.2, 0.1, 0.05]  # free greedy generation: every policy at these budgets (and full)


def settings():
    out = [dict(kv_policy="full", kv_budget=1.0, kv_scope="visual")]
    for r in BUDGETS:
        for p in POLICIES:
            out.append(dict(kv_policy=p, kv_budget=r, kv_scope="visual"))
    for r in ALL_SCOPE_BUDGETS:
        for p in ALL_SCOPE:
            out.append(dict(kv_policy=p, kv_budget=r, kv_scope="all"))
    return out


def gen_settings():
    return [dict(kv_policy="full", kv_budget=1.0, kv_scope="visual")] + [
        dict(kv_policy=p, kv_budget=r, kv_scope="visual") for r in GEN_BUDGETS for p in POLICIES]


def key(s):
    """A setting's key: (policy, budget, scope); a setting with a `label` (tools/ablate_policy.py's
    variants with options) is keyed by its label instead of the policy name."""
    return (s.get("label", s["kv_policy"]), s["kv_budget"], s["kv_scope"])


def engine_setting(s):
    return {k: v for k, v in s.items() if k != "label"}



def load_questions(qset, limit=0):
    """The questions of a set (the first `limit`; 0: all) and image(q): its RGB array, each file read once."""
    import scenes

    questions, _ = scenes.load_set(qset)
    if limit:
        questions = questions[:limit]
    images = {}

    def image(q):
        p = os.path.join(qset, q["image"])
        if p not in images:
            images[p] = ac.image.to_rgb_array(p)
        return images[p]

    return questions, image

def valset(n_scenes: int, root=None) -> str:
    """A validation set in the held-out set's format: the first n_scenes scenes from the generator's
    validation seeds (scenes.VAL_SEED_BASE, neither training nor test), one question of each type per
    scene, written once to a cache directory (default: $TMPDIR/aircache-valset-N)."""
    import tempfile

    from scenes.dataset import write_set

    import scenes

    d = root or os.path.join(tempfile.gettempdir(), f"aircache-valset-{n_scenes}")
    if not os.path.exists(os.path.join(d, "questions.jsonl")):
        tmp = d + f".tmp{os.getpid()}"
        write_set(tmp, n_scenes, scenes.VAL_SEED_BASE, "val")
        os.replace(tmp, d) if not os.path.exists(d) else None
    return d


def evaluate(model, enc, questions, image, cfgs, label="", hit_rate=True):
    """One prefill per (question, protocol) serves every setting (Model.evaluate_policies): per
    (protocol, *key(setting)): correct key tokens per type, teacher-forced exact answers (every token
    of the answer and its </s> is the argmax, i.e. greedy decoding over that cache writes exactly the
    answer and stops: over the compressed prompt in question-aware, after the fixed first reply in
    follow-up), whether the fixed first reply is itself the greedy one (follow-up), visual fraction
    kept, KV bytes, hit rate, and per-prompt (hit rate, correct) pairs."""
    import scenes

    R = collections.defaultdict(lambda: dict(correct=collections.Counter(), exact=collections.Counter(),
                                             first=0, vis=[], kv=[], hit=[], pairs=[]))
    counts = collections.Counter()
    full_pred = {}
    t0 = time.time()
    total = len(questions) * len(scenes.PROTOCOLS)
    done = 0
    eng = [engine_setting(s) for s in cfgs]
    for q in questions:
        for proto in scenes.PROTOCOLS:
            e = enc.encode(q["question"], q["answer"], q["key"], q["key_offset"], proto)
            ids = e["input_ids"]
            a0 = e["answer_start"]
            f0 = e["n_prompt"] if proto == "follow-up" else a0
            pos = list(range(f0 - 1, len(ids) - 1))  # predictions of ids[f0:], the key among them
            res = model.evaluate_policies(ids, images=[image(q)], n_prompt=e["n_prompt"], policies=eng,
                                          positions=pos, hit_rate=hit_rate)
            counts[(proto, q["type"])] += 1
            target = np.asarray(ids[f0:])
            for s, (lg, st) in zip(cfgs, res):
                am = np.argmax(lg, axis=1)
                ok = am == target
                pred = int(am[e["key_pos"] - f0])
                k = (proto,) + key(s)
                r = R[k]
                good = pred == e["key_id"]
                r["correct"][q["type"]] += good
                r["exact"][q["type"]] += bool(ok[a0 - f0:].all())
                r.setdefault("per_q", {})[q["id"]] = bool(ok[a0 - f0:].all())
                if proto == "follow-up":
                    r["first"] += bool(ok[: e["turn1_end"] - f0].all())
                r["vis"].append(float(np.mean(st.visual_kept)) / max(model.n_image_tokens(), 1))
                r["kv"].append(st.kv_bytes_after)
                r["hit"].append(st.hit_rate)
                r["pairs"].append((st.hit_rate, float(good)))
                if s["kv_policy"] == "full":
                    full_pred[(q["id"], proto)] = (pred, ids[: e["key_pos"] + 1], e["key_pos"])
            done += 1
            progress(done, total, t0, label)
    sys.stderr.write("\n")
    return R, counts, full_pred, time.time() - t0


def free_generation(model, questions, image, gcfgs, label="free generation"):
    """Free greedy generation, exact match of the answer text, per (protocol, *key(setting)):
    question-aware: Model.generate(image, question); follow-up: a real Session, compressed after its
    first turn (image + "Look at the image.", the reply generated freely), the question sent as the
    second turn. Returns ({key: exact count}, {follow-up key: first replies equal to the trained
    one}, seconds)."""
    import scenes

    exact, first = collections.Counter(), collections.Counter()
    exact.per_q = {}  # (protocol, *key, question id) -> exact
    t0 = time.time()
    total, done = len(questions) * len(gcfgs), 0
    for q in questions:
        img = image(q)
        for s in gcfgs:
            es = engine_setting(s)
            r = model.generate(img, q["question"], max_tokens=24, **es)
            exact[("question-aware",) + key(s)] += int(r.text.strip() == q["answer"])
            exact.per_q[("question-aware",) + key(s) + (q["id"],)] = r.text.strip() == q["answer"]
            sess = model.session(**es)
            r1 = sess.send([{"type": "image", "image": img}, {"type": "text", "text": scenes.FOLLOWUP_FIRST_TURN}],
                           max_tokens=24)
            r2 = sess.send(q["question"], max_tokens=24)
            first[("follow-up",) + key(s)] += int(r1.text.strip() == scenes.FOLLOWUP_REPLY)
            exact[("follow-up",) + key(s)] += int(r2.text.strip() == q["answer"])
            exact.per_q[("follow-up",) + key(s) + (q["id"],)] = r2.text.strip() == q["answer"]
            done += 1
            progress(done, total, t0, label)
    sys.stderr.write("\n")
    return exact, first, time.time() - t0


def corr(x, y):
    """Pearson's r (nan when either side is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y):
    rank = lambda v: np.argsort(np.argsort(np.asarray(v, float), kind="stable"), kind="stable")
    return corr(rank(x), rank(y))


def progress(done, total, t0, extra=""):
    el = time.time() - t0
    eta = el / done * (total - done) if done else 0
    w = 30
    bar = "#" * int(w * done / total) + "." * (w - int(w * done / total))
    sys.stderr.write(f"\r[{bar}] {done}/{total} {el:5.0f}s elapsed, ~{eta:4.0f}s left {extra}   ")
    sys.stderr.flush()


def main(argv=None) -> None:
    args = list(argv if argv is not None else sys.argv[1:])
    if "--model" in args:  # the second demo model (Qwen2-VL, issue 19) has its own protocols: tools/eval_qwen.py
        i = args.index("--model")
        name = args[i + 1] if i + 1 < len(args) else ""
        if name == "qwen2vl":
            import eval_qwen

            eval_qwen.main(args[:i] + args[i + 2:])
            return
        if name != "llava":
            raise SystemExit(f"--model: 'llava' (the first demo model, default) or 'qwen2vl', not {name!r}")
        argv = args[:i] + args[i + 2:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(HERE, "demo_ckpt", "hf"), help="the demo model's HF checkpoint")
    ap.add_argument("--gguf", default=None, help="directory with demo.gguf + demo-mmproj.gguf (default: the packaged model)")
    ap.add_argument("--testset", default=os.path.join(HERE, "scenes", "testset"))
    ap.add_argument("--valset", type=int, default=0, metavar="N",
                    help="use N validation scenes (the generator's validation seeds, 5 questions each, written once "
                         "to $TMPDIR) instead of --testset: for design; the held-out set is for the final table")
    ap.add_argument("--limit", type=int, default=0, help="questions to use (0 = all)")
    ap.add_argument("--generate", type=int, default=0,
                    help="questions for free greedy generation (Model.generate and a real Session; 0 = all)")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "quality.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "quality.png"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--kv-type", default="f16", help="KV cache type (f16, f32, q8_0, q4_0; 'K,V': a type each)")
    a = ap.parse_args(argv)

    import scenes
    from transformers import AutoTokenizer

    if a.gguf:
        text, mm = os.path.join(a.gguf, "demo.gguf"), os.path.join(a.gguf, "demo-mmproj.gguf")
    else:
        text, mm = ac.demo_model_paths()
    tk, tv = (a.kv_type.split(",") * 2)[:2]
    model = ac.Model(text, mmproj=mm, n_threads=a.threads or None, kv_type_k=tk, kv_type_v=tv, n_ctx=1024)
    tok = AutoTokenizer.from_pretrained(a.hf)
    enc = scenes.Encoder(tok, model.n_image_tokens())
    qset = valset(a.valset) if a.valset else a.testset
    set_name = (f"validation set ({a.valset} scenes from the generator's validation seeds)" if a.valset
                else "fixed held-out test set (tools/scenes/testset")
    questions, image = load_questions(qset, a.limit)

    cfgs = settings()
    R, counts, full_pred, eval_s = evaluate(model, enc, questions, image, cfgs)
    total = len(questions) * len(scenes.PROTOCOLS)

    # the runtime's full-cache answers against HF's (teacher forcing, same ids and pixels)
    agree = n_agree = 0
    try:
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        if a.threads:  # torch's own pool, as many threads as the runtime (a shared machine: no oversubscription)
            torch.set_num_threads(a.threads)
        hf = LlavaForConditionalGeneration.from_pretrained(a.hf, torch_dtype=torch.float32).eval()
        proc = AutoProcessor.from_pretrained(a.hf)
        t1 = time.time()
        for i, q in enumerate(questions):
            px = proc(images=image(q), text="<image>", return_tensors="pt").pixel_values
            for proto in scenes.PROTOCOLS:
                pred, ids, kpos = full_pred[(q["id"], proto)]
                with torch.no_grad():
                    lg = hf(input_ids=torch.tensor([ids]), pixel_values=px).logits[0, kpos - 1]
                agree += int(int(lg.argmax()) == pred)
                n_agree += 1
            progress(i + 1, len(questions), t1, "HF agreement")
        sys.stderr.write("\n")
    except Exception as exc:  # report, do not hide
        print(f"HF agreement check failed: {exc}", file=sys.stderr)

    # free (greedy) generation, exact match of the answer: every policy at GEN_BUDGETS, both protocols
    gcfgs = gen_settings()
    subset = questions[: a.generate] if a.generate else questions
    free, free_first, gen_s = free_generation(model, subset, image, gcfgs)
    n_gen = len(subset)

    types = scenes.QTYPES
    n_vis = model.n_image_tokens()
    results = {}
    for proto in scenes.PROTOCOLS:
        n_all = sum(counts[(proto, t)] for t in types)
        for s in cfgs:
            k = (proto,) + key(s)
            r = R[k]
            hits = [h for h, _ in r["pairs"]]
            results[json.dumps(k)] = {
                "overall": 100 * sum(r["correct"].values()) / max(n_all, 1),
                "types": {t: 100 * r["correct"][t] / max(counts[(proto, t)], 1) for t in types},
                "visual_kept": float(np.mean(r["vis"])), "kv_bytes": float(np.mean(r["kv"])),
                "hit_rate": float(np.mean(r["hit"])),
                # added (issue 18): greedy exactness by teacher forcing on every question, the free
                # greedy generation's exact match (GEN_BUDGETS only), hit rate vs correctness per prompt
                "exact_tf": 100 * sum(r["exact"].values()) / max(n_all, 1),
                "exact_tf_types": {t: 100 * r["exact"][t] / max(counts[(proto, t)], 1) for t in types},
                "first_reply_tf": (100 * r["first"] / max(n_all, 1)) if proto == "follow-up" else None,
                "free_exact": (100 * free[k] / n_gen) if any(k == (proto,) + key(g) for g in gcfgs) and n_gen else None,
                "free_first_reply": ((100 * free_first[k] / n_gen) if proto == "follow-up" and n_gen and
                                     any(k == (proto,) + key(g) for g in gcfgs) else None),
                "free_n": n_gen,
                "hit_correct_corr": corr(hits, [c for _, c in r["pairs"]]),  # None when undefined (constant)
            }

    for v in results.values():
        if v["hit_correct_corr"] != v["hit_correct_corr"]:
            v["hit_correct_corr"] = None

    def res(proto, p, r, scope="visual"):
        return results[json.dumps((proto, p, r, scope))]

    lines = ["# Demo model: key-token accuracy versus KV budget", "",
             "(The second demo model, Qwen2-VL, with its four protocols: the second part of this file, "
             "written by tools/eval_qwen.py --section.)", "",
             "The bundled demo model (a LLaVA trained on tools/scenes, " + f"{n_vis} visual tokens per image; README, "
             f"'Demo model and the quality benchmark') on the {set_name}: "
             f"{len(questions)} questions, {', '.join(f'{t}: {counts[(scenes.PROTOCOLS[0], t)]}' for t in types)}), "
             "through the C++ runtime (F16 weights and KV cache). Score: the key word of the answer (after its "
             "lead-in, so computed over the compacted cache) is the runtime's argmax, by teacher forcing. "
             "*question-aware*: image + question are the prompt that is compressed; *follow-up*: image + "
             "\"Look at the image.\" is compressed, the question comes as a second turn over the compacted cache. "
             "`budget` is the fraction of the candidates kept (scope `visual`: the image positions, text always "
             "kept; scope `all`: every prompt position); `visual KV kept` the fraction of image positions kept "
             "(mean over layers); `KV bytes` the compacted prompt cache; `hit rate` the recall of the kept set: per layer, the "
             "fraction of the top-k candidates by the first continuation token's attention in the full-cache run "
             "that were kept (k = the number kept), averaged; `exact (tf)`: every token of the answer and its `</s>` is "
             "the argmax by teacher forcing (greedy decoding over that cache writes exactly the answer and stops; in "
             "follow-up after the trained first reply \"I see the shapes.\", fed). `mosaic` is this project's policy "
             "(docs/compression.md, \"Mosaic\"), at its defaults.", "",
             f"Command: `python tools/eval_quality.py{''.join(' ' + x for x in (argv if argv is not None else sys.argv[1:]))}`; the evaluation took {eval_s:.0f} s for {len(cfgs)} settings "
             f"x {total} prompts (one prefill per prompt serves every setting), and free generation {gen_s:.0f} s for "
             f"{len(gcfgs)} settings x {n_gen} questions x 2 protocols, {a.threads or 'default'} threads.", ""]
    if n_agree:
        lines.append(f"Runtime full-cache key predictions equal HF transformers' (teacher forcing) on "
                     f"{agree}/{n_agree} = {100 * agree / n_agree:.1f}%.")
        lines.append("")

    # free generation against the teacher-forced exactness, question by question
    agree_free = {}
    for proto in scenes.PROTOCOLS:
        same = tot = 0
        for g in gcfgs:
            k = (proto,) + key(g)
            for q in subset:
                same += int(free.per_q[k + (q["id"],)] == R[k]["per_q"][q["id"]])
                tot += 1
        agree_free[proto] = (same, tot)

    # free generation first: what a user sees
    lines += ["## Free greedy generation: exact answers", "",
              f"Exact match of the generated answer text on {n_gen} questions (greedy, until `</s>`): "
              "*question-aware* `Model.generate(image, question)`; *follow-up* a real `Session`: the first turn "
              "(image + \"Look at the image.\") is prefilled, compressed and answered freely, the question is the "
              "second turn over the compacted cache. Beside it: key-token accuracy (teacher forcing, all questions) "
              "and `first reply`: the session's first reply equals the trained \"I see the shapes.\". "
              "Free generation against the teacher-forced `exact (tf)`, question by question over these settings: "
              + "; ".join(f"{p} {s_}/{t_} = {100 * s_ / max(t_, 1):.1f}% agree" for p, (s_, t_) in agree_free.items())
              + " (question-aware: the same quantity, greedy decoding vs teacher forcing; follow-up: the real "
              "session's own first reply vs the trained one fed).", "",
              "| policy | budget | question-aware key | question-aware free exact | follow-up key | follow-up free exact "
              "| follow-up first reply |", "|---|---:|---:|---:|---:|---:|---:|"]
    for g in gcfgs:
        qa, fu = res("question-aware", *key(g)[:2]), res("follow-up", *key(g)[:2])
        lines.append(f"| {g['kv_policy']} | {g['kv_budget']} | {qa['overall']:.1f} | {qa['free_exact']:.1f} | "
                     f"{fu['overall']:.1f} | {fu['free_exact']:.1f} | {fu['free_first_reply']:.1f} |")
    lines.append("")

    for proto in scenes.PROTOCOLS:
        lines += [f"## {proto}", "", "| policy | scope | budget | overall | " + " | ".join(types) +
                  " | visual KV kept | KV bytes | hit rate | exact (tf) |",
                  "|---|---|---:|---:|" + "---:|" * len(types) + "---:|---:|---:|---:|"]
        for s in cfgs:
            x = results[json.dumps((proto,) + key(s))]
            lines.append(f"| {s['kv_policy']} | {s['kv_scope']} | {s['kv_budget']} | {x['overall']:.1f} | " +
                         " | ".join(f"{x['types'][t]:.1f}" for t in types) +
                         f" | {100 * x['visual_kept']:.1f}% | {x['kv_bytes'] / 1024:.0f} KiB | "
                         f"{x['hit_rate']:.3f} | {x['exact_tf']:.1f} |")
        lines.append("")

    # does the cache hit rate predict accuracy?
    lines += ["## Hit rate against accuracy", "",
              "Across the compressed visual-scope settings (every policy and budget): the correlation of the mean "
              "hit rate with key-token accuracy and with teacher-forced exact answers; within a setting, per prompt: "
              "the correlation of the prompt's hit rate with its key word being right (mean over the settings of "
              "a budget; NaN-free ones).", "",
              "| protocol | Pearson (hit, accuracy) | Spearman (hit, accuracy) | Pearson (hit, exact) | "
              + " | ".join(f"per-prompt r at {b}" for b in BUDGETS) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(BUDGETS)]
    for proto in scenes.PROTOCOLS:
        xs = [res(proto, p, b) for b in BUDGETS for p in POLICIES]
        per = []
        for b in BUDGETS:
            v = [res(proto, p, b)["hit_correct_corr"] for p in POLICIES]
            v = [x for x in v if x is not None]
            per.append(f"{np.mean(v):.2f}" if v else "n/a")
        lines.append(f"| {proto} | {corr([x['hit_rate'] for x in xs], [x['overall'] for x in xs]):.2f} | "
                     f"{spearman([x['hit_rate'] for x in xs], [x['overall'] for x in xs]):.2f} | "
                     f"{corr([x['hit_rate'] for x in xs], [x['exact_tf'] for x in xs]):.2f} | " + " | ".join(per) + " |")
    lines.append("")

    # plainly: do the attention policies and mosaic beat the best baseline at the low budgets?
    lines += ["## Against the best baseline (overall key-token accuracy, visual scope)", "",
              "| protocol | budget | full | aircache | vlcache | mosaic | best baseline | best wave-1 policy | verdict |",
              "|---|---:|---:|---:|---:|---:|---|---|---|"]
    baselines = [p for p in WAVE1 if p not in ("aircache", "vlcache")]
    for proto in scenes.PROTOCOLS:
        full = res(proto, "full", 1.0)["overall"]
        for r in [b for b in BUDGETS if b <= 0.2]:
            acc = {p: res(proto, p, r)["overall"] for p in POLICIES}
            best = max(baselines, key=lambda p: acc[p])
            best1 = max(WAVE1, key=lambda p: acc[p])
            verdict = []
            for m in ("aircache", "vlcache"):
                d = acc[m] - acc[best]
                verdict.append(f"{m} {'beats' if d > 0 else 'ties' if d == 0 else 'does not beat'} it ({d:+.1f})")
            d = acc["mosaic"] - acc[best1]
            verdict.append(f"mosaic vs the best wave-1 policy {d:+.1f}")
            lines.append(f"| {proto} | {r} | {full:.1f} | {acc['aircache']:.1f} | {acc['vlcache']:.1f} | "
                         f"{acc['mosaic']:.1f} | {best} {acc[best]:.1f} | {best1} {acc[best1]:.1f} | {'; '.join(verdict)} |")
    lines.append("")

    # the targets for mosaic (visual scope)
    lines += ["## Mosaic against its targets (visual scope)", "", "| target | measured | met |", "|---|---|---|"]
    for proto, slack in (("question-aware", 2.0), ("follow-up", 10.0)):
        full, m = res(proto, "full", 1.0)["overall"], res(proto, "mosaic", 0.1)["overall"]
        lines.append(f"| {proto}, 0.1: key-token accuracy >= full - {slack:.0f} | {m:.1f} vs full {full:.1f} | "
                     f"{'yes' if m >= full - slack else 'no'} |")
    for proto in scenes.PROTOCOLS:
        fe, me = res(proto, "full", 1.0)["free_exact"], res(proto, "mosaic", 0.1)["free_exact"]
        lines.append(f"| {proto}, 0.1: free greedy exact >= 0.9 x full's | {me:.1f} vs 0.9 x {fe:.1f} = {0.9 * fe:.1f} | "
                     f"{'yes' if me >= 0.9 * fe else 'no'} |")
    for proto in scenes.PROTOCOLS:
        for r in (0.05, 0.02):
            acc = {p: res(proto, p, r)["overall"] for p in POLICIES}
            best1 = max(WAVE1, key=lambda p: acc[p])
            d = acc["mosaic"] - acc[best1]
            lines.append(f"| {proto}, {r}: ahead of every wave-1 policy by >= 3 | {acc['mosaic']:.1f} vs {best1} "
                         f"{acc[best1]:.1f} ({d:+.1f}) | {'yes' if d >= 3 else 'no'} |")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    import eval_qwen

    tail = ""  # the second demo model's section (tools/eval_qwen.py --section) stays
    if os.path.exists(a.out):
        with open(a.out) as f:
            old = f.read()
        if eval_qwen.SECTION_MARKER in old:
            tail = "\n" + old[old.index(eval_qwen.SECTION_MARKER):]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n" + tail)
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)

    # the plot: accuracy versus budget per policy, one panel per protocol
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, proto in zip(axes, scenes.PROTOCOLS):
        full = res(proto, "full", 1.0)["overall"]
        for p in POLICIES:
            xs = [1.0] + BUDGETS
            ys = [full] + [res(proto, p, r)["overall"] for r in BUDGETS]
            ax.plot(xs, ys, marker="o", label=p, linewidth=2.8 if p == "mosaic" else 1.2,
                    color="black" if p == "mosaic" else None)
        ax.set_xscale("log")
        ax.set_xlabel("visual KV budget (fraction kept)")
        ax.set_title(proto)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("key-token accuracy (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
