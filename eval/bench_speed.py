"""Speed and memory of Weight Patching, side by side in one run on one machine.

    python eval/bench_speed.py --base BASE --expert EXPERT --probes PROBES.jsonl [--max-probes 8] [--out DIR]

Methods, each in its own subprocess so that peak RSS is its own:
  floor        no patching: mechmerge's setup (tokenizer, base model), the baseline pass, the
               recorded input of every block for every probe batch and one replay through
               the lm_head (what exact scoring holds while it patches, without a patch);
               the memory every method needs at least
  naive        both models fully in memory; for every unit, copy the expert's weights
               into the base and run the full Hugging Face forward (all logits), restore
  exact        `mechmerge score --method exact` (suffix-only replay, streamed expert)
  attribution  `mechmerge score --method attribution`
  hybrid       `mechmerge score --method hybrid --top-k 10`
and, on the same recipe, `mergekit-yaml` against `mechmerge merge`.

Prints and writes (DIR/bench.md, DIR/bench.json) wall times, ratios, peak RSS,
exact-vs-naive max score difference, and hybrid/attribution agreement with exact
(Spearman and top-10 overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Sequence

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(keys: Sequence[str]) -> Dict[str, int]:
    """The given /proc/self/status fields (VmRSS, VmHWM, RssAnon, ...) in MB, in the file's order."""
    with open("/proc/self/status") as f:
        fields = (line.split(":", 1) for line in f)
        return {k: int(v.split()[0]) // 1024 for k, v in fields if k in keys}


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The base, expert and probes every measurement here runs on."""
    ap.add_argument("--base", required=True)
    ap.add_argument("--expert", required=True)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--max-probes", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)


def naive(args) -> dict:
    """The straightforward loop: two models in memory, one full forward per unit."""
    import torch

    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import load_model, param_order
    from mechmerge.models.units import discover_units
    from mechmerge.patching.swap import identical

    r0 = rss_mb()
    t0 = time.perf_counter()
    base, expert = Checkpoint.open(args.base), Checkpoint.open(args.expert)
    batches = probe_batches(args, base)
    mb = load_model(base, torch.device("cpu"), torch.float32)
    me = load_model(expert, torch.device("cpu"), torch.float32)
    pb, pe = dict(mb.named_parameters()), dict(me.named_parameters())
    units = discover_units(param_order(base), base.family, base.num_layers, "module")

    def m_of(model) -> float:
        lp, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
                logp = torch.log_softmax(logits, -1)[b.rows, b.positions].gather(1, b.targets[:, None])
                lp += float(logp.double().sum())
                n += b.n_tokens
        return lp / n

    m_b, m_e = m_of(mb), m_of(me)
    gap = m_e - m_b
    scores = {}
    for u in units:
        if identical(base, expert, u):
            scores[u.name] = {"patch_in": 0.0, "knockout": 0.0}
            continue
        row = {}
        for direction, (dst, src) in {"patch_in": (pb, pe), "knockout": (pe, pb)}.items():
            saved = {t: dst[t].data.clone() for t in u.tensors}
            with torch.no_grad():
                for t in u.tensors:
                    dst[t].data.copy_(src[t].data)
            model = mb if direction == "patch_in" else me
            m = m_of(model)
            with torch.no_grad():
                for t in u.tensors:
                    dst[t].data.copy_(saved[t])
            row[direction] = (m - m_b) / gap if direction == "patch_in" else (m_e - m) / gap
        scores[u.name] = row
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb(), "rss_before_mb": r0, "scores": scores,
            "model_mb": sum(p.numel() * p.element_size() for p in mb.parameters()) / 2 ** 20}


def unpatched_steps(args, mark: Callable[..., None] = lambda label, runner, detail="": None):
    """What exact scoring does and holds before its first patch: mechmerge's setup (base,
    tokenizer, probes), the baseline pass, every batch's trace (the input of every block) and
    one replay of the whole model from it through the lm_head. `mark(label, runner, detail)`
    is called after each step (eval/mem_steps.py prints the memory there). Returns the setup."""
    import torch

    from mechmerge.patching import engine
    from mechmerge.patching.score import ScoreOptions, prepare

    setup = prepare(ScoreOptions(base=args.base, experts={"x": args.expert}, probes={"x": args.probes}, out="",
                                 method="exact", max_probes=args.max_probes, batch_size=args.batch_size,
                                 progress=False))
    runner, batches = setup.runner, setup.batches["x"]
    mark("loaded", runner)
    engine.measure_baseline(runner, batches)
    mark("baseline", runner)
    # (measure_baseline alone no longer keeps the block inputs since commit fe69e67.)
    with torch.no_grad():
        traces = [runner.trace(b) for b in batches]
        mark("traces", runner, f"(block inputs: {sum(t.nbytes() for t in traces) / 2 ** 20:.0f} MB)")
        final, _ = runner.run_from(traces[0], 0)
        mark("replay", runner)
        runner.response_logprobs(final, traces[0].batch)
        mark("tail", runner)
    return setup


def floor(args) -> dict:
    """Load as scoring does and run the unpatched passes: the memory of model + activations."""
    r0 = rss_mb()
    t0 = time.perf_counter()
    setup = unpatched_steps(args)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb(), "rss_before_mb": r0,
            "model_mb": setup.base.nbytes() / 2 ** 20}


def probe_batches(args, base):
    """The benchmark's probe batches, tokenized with the base's tokenizer."""
    from mechmerge.models.load import load_tokenizer
    from mechmerge.probes import load_probes, make_batches, pad_id_of, tokenize_all

    tok = load_tokenizer([base])
    return make_batches(tokenize_all(load_probes(args.probes, limit=args.max_probes), tok, None),
                        args.batch_size, pad_id_of(tok))


def memory_terms(args) -> dict:
    """The base model's bytes, and what exact scoring keeps of activations: every block's
    input for every probe batch (one trace group when they fit in --cache-mb), float32."""
    from mechmerge.models.checkpoint import Checkpoint

    base = Checkpoint.open(args.base)
    tokens = sum(b.input_ids.numel() for b in probe_batches(args, base))
    return {"model_mb": base.nbytes() / 2 ** 20,
            "activation_mb": (base.num_layers + 1) * tokens * base.config["hidden_size"] * 4 / 2 ** 20}


def mechmerge_score(args, method: str) -> dict:
    from mechmerge.patching.score import ScoreOptions, score

    r0 = rss_mb()
    t0 = time.perf_counter()
    out = Path(args.out) / f"scores-{method}.json"
    data = score(ScoreOptions(base=args.base, experts={"x": args.expert}, probes={"x": args.probes}, out=str(out),
                              method=method, top_k=10, max_probes=args.max_probes, batch_size=args.batch_size,
                              force=True, progress=False))
    mods = data["experts"]["x"]["modules"]
    result = {"seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb(), "rss_before_mb": r0,
              "scores": {u: {"patch_in": s["patch_in"], "knockout": s["knockout"]} for u, s in mods.items()},
              "exact_units": sum(s["method"] == "exact" for s in mods.values())}
    # after the peak was read: only exact's memory is held to the target
    return {**result, **memory_terms(args)} if method == "exact" else result


def child(args) -> None:
    fn = {"floor": floor, "naive": naive, "exact": lambda a: mechmerge_score(a, "exact"),
          "attribution": lambda a: mechmerge_score(a, "attribution"),
          "hybrid": lambda a: mechmerge_score(a, "hybrid")}[args.only]
    timeline = sample_rss()
    res = fn(args)
    res["rss_timeline"] = timeline  # [seconds, MB] every RSS_SAMPLE_S: where in the run the peak happened
    Path(args.out, f"{args.only}.json").write_text(json.dumps(res))


RSS_SAMPLE_S = 2.0


def sample_rss() -> list:
    """Record the resident size every RSS_SAMPLE_S seconds in a daemon thread."""
    import threading

    samples: list = []
    t0 = time.perf_counter()

    def run() -> None:
        while True:
            samples.append([round(time.perf_counter() - t0, 1), proc_status_mb(("VmRSS",))["VmRSS"]])
            time.sleep(RSS_SAMPLE_S)

    if Path("/proc/self/status").exists():
        threading.Thread(target=run, daemon=True).start()
    return samples


def spearman(a, b) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(ref: dict, other: dict, key: str, k: int = 10) -> dict:
    units = list(ref)
    a = [ref[u][key] for u in units]
    b = [other[u][key] for u in units]
    top = lambda v: set(sorted(units, key=lambda u: -v[units.index(u)])[:k])  # noqa: E731
    return {"spearman": spearman(a, b), f"top{k}_overlap": len(top(a) & top(b)),
            "max_abs_diff": max(abs(x - y) for x, y in zip(a, b))}


def time_merge(args) -> dict:
    """mergekit-yaml vs mechmerge merge on the same recipe, both as their console scripts
    in fresh processes. The two alternate run by run, so a slow spell of a shared machine
    hits both; each side's best and median of --merge-repeats runs are reported, the
    overhead on the best (the least disturbed run of each)."""
    import statistics

    recipe = Path(args.out) / "bench-recipe.yaml"
    scores = Path(args.out) / "scores-exact.json"
    subprocess.run([sys.executable, "-m", "mechmerge", "recipe", str(scores), "--out", str(recipe), "--strategy",
                    "share", "--force"], check=True, capture_output=True)
    bindir = Path(sys.executable).parent
    cmds = {"mergekit-yaml": [str(bindir / "mergekit-yaml"), str(recipe), str(Path(args.out) / "m1")],
            "mechmerge merge": [str(bindir / "mechmerge"), "merge", str(recipe), "--out", str(Path(args.out) / "m2")]}
    runs: dict = {name: [] for name in cmds}
    for _ in range(args.merge_repeats):
        for name, cmd in cmds.items():
            subprocess.run(["rm", "-rf", cmd[-1]], check=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            runs[name].append(time.perf_counter() - t0)
    for name in cmds:
        subprocess.run(["rm", "-rf", cmds[name][-1]], check=True)
    times = {name: min(r) for name, r in runs.items()}
    times["median"] = {name: statistics.median(r) for name, r in runs.items()}
    times["runs"] = runs
    times["overhead"] = times["mechmerge merge"] / times["mergekit-yaml"] - 1
    times["overhead_median"] = times["median"]["mechmerge merge"] / times["median"]["mergekit-yaml"] - 1
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--methods", default="floor,naive,exact,attribution,hybrid")
    ap.add_argument("--merge-repeats", type=int, default=7)
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.only:
        return child(args)
    res = {}
    for m in args.methods.split(","):
        print(f"running {m} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--only", m] + [x for a, v in vars(args).items() if a != "only" and v
                                                          for x in (f"--{a.replace('_', '-')}", str(v))]
        subprocess.run(cmd, check=True)
        res[m] = json.loads(Path(args.out, f"{m}.json").read_text())
        print(f"  {m}: {res[m]['seconds']:.1f} s, peak RSS {res[m]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None},
              "settings": {"max_probes": args.max_probes, "batch_size": args.batch_size}, "methods": {}}
    for m, r in res.items():
        report["methods"][m] = {k: v for k, v in r.items() if k != "scores"}
    if "exact" in res:
        for m in res:
            if m not in ("exact", "floor"):
                report["methods"][m]["vs_exact"] = {k: agreement(res["exact"]["scores"], res[m]["scores"], k)
                                                    for k in ("patch_in", "knockout")}
                report["methods"][m]["speedup_vs_exact"] = res["exact"]["seconds"] / res[m]["seconds"]
        if "naive" in res:
            report["methods"]["exact"]["speedup_vs_naive"] = res["naive"]["seconds"] / res["exact"]["seconds"]
        ex = res["exact"]
        # target: peak memory of exact scoring <= 1.3 x model bytes + activations, i.e. this <= 1.3.
        # Strict reading: only the recorded block inputs count as activations (the process's
        # libraries, tokenizer and the forward's working memory count against the model).
        report["methods"]["exact"]["memory_over_model_strict"] = (
            ex["peak_rss_mb"] - ex["rss_before_mb"] - ex["activation_mb"]) / ex["model_mb"]
        if "floor" in res:
            # activations = everything one unpatched pass over the probes holds beyond the
            # model (floor's peak minus the model), so this is 1 + what patching adds / model
            report["methods"]["exact"]["memory_over_model"] = (
                1 + (ex["peak_rss_mb"] - res["floor"]["peak_rss_mb"]) / ex["model_mb"])
        report["merge"] = time_merge(args)
    Path(args.out, "bench.json").write_text(json.dumps(report, indent=1))
    Path(args.out, "bench.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    rows = ["| method | wall time | speed-up | peak RSS | agreement with exact (patch_in / knockout) |",
            "|---|---:|---:|---:|---|"]
    m = report["methods"]
    for name, r in m.items():
        if name == "floor":
            rows.append(f"| floor (load, unpatched passes, traces held; no patch) | {r['seconds']:.1f} s | | "
                        f"{r['peak_rss_mb']:.0f} MB | |")
            continue
        if name == "exact":
            sp = f"{r['speedup_vs_naive']:.2f}x vs naive" if "speedup_vs_naive" in r else ""
            agree = "reference"
        else:
            sp = "1.00x (baseline)" if name == "naive" else f"{r['speedup_vs_exact']:.1f}x vs exact"
            v = r.get("vs_exact", {})
            agree = " / ".join(f"Spearman {v[k]['spearman']:.3f}, top-10 {v[k]['top10_overlap']}/10, "
                               f"max diff {v[k]['max_abs_diff']:.1e}" for k in ("patch_in", "knockout") if k in v)
        rows.append(f"| {name} | {r['seconds']:.1f} s | {sp} | {r['peak_rss_mb']:.0f} MB | {agree} |")
    ex = m.get("exact", {})
    if "memory_over_model_strict" in ex:
        rows.append("")
        if "memory_over_model" in ex:
            rows.append(f"Exact scoring memory: peak RSS {ex['peak_rss_mb']:.0f} MB against floor's "
                        f"{m['floor']['peak_rss_mb']:.0f} MB, so with activations = what one unpatched pass holds "
                        f"beyond the model, peak = {ex['memory_over_model']:.2f}x the base model's "
                        f"{ex['model_mb']:.0f} MB + activations (target <= 1.3).")
        rows.append(f"Strict reading: peak RSS minus the process before loading, minus only the recorded block "
                    f"inputs ({ex['activation_mb']:.0f} MB), is {ex['memory_over_model_strict']:.2f}x the model.")
    if "merge" in report:
        mg = report["merge"]
        n = len(mg.get("runs", {}).get("mergekit-yaml", [])) or "several"
        line = (f"Merge of the same recipe ({n} alternating runs each, best): mergekit-yaml {mg['mergekit-yaml']:.2f} s, "
                f"mechmerge merge {mg['mechmerge merge']:.2f} s ({100 * mg['overhead']:+.1f}%, target <= +5%)")
        if "median" in mg:
            line += (f"; medians {mg['median']['mergekit-yaml']:.2f} s and {mg['median']['mechmerge merge']:.2f} s "
                     f"({100 * mg['overhead_median']:+.1f}%)")
        rows.append(line + ".")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
