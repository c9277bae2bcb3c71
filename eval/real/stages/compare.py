"""Stage `compare`: mechmerge's comparison harness on the specialists.

Writes the suite JSON (`mechmerge/evaluate/suite.py`: base, experts, score/dev/test splits
per specialist task, the verifiers as metrics, the base's plain answers as the quality
task), measures what one merge, one calibration candidate, one dev and one test evaluation
cost, projects the whole protocol from them (logged and kept in estimate.json), then runs
`mechmerge.evaluate.compare.compare`. The harness keeps its per-candidate cache in
`.work/compare/run/`, so a killed stage resumes; sizes can be grown later (2, then 2,3)
and only the new combinations are computed; `--set compare.workers=N` runs N processes
over the combinations (with `--threads`, the threads are split among them);
`--set compare.partial=true` computes nothing and publishes the interim table of the
combinations finished so far (results-partial.md/png; safe while the stage runs). The hybrid
scores of the `score` stage are handed to the harness (it would otherwise rescore
everything exactly).

Artifact: suite.json, estimate.json, results.{md,json,png}; results.md/png are also copied
to eval/real/results/<model>/ (`compare.publish`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from mechmerge.evaluate.cache import PROTOCOL
from mechmerge.evaluate.compare import TA_GRID, CompareOptions, compare
from mechmerge.evaluate.run import Evaluator
from mechmerge.merge import engine as mk
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model, load_tokenizer, overwrite_params, params_by_name, resolve_dtype
from mechmerge.recipe import strategies
from mechmerge.recipe.build import RecipeOptions, make_recipe
from mechmerge.recipe.calibrate import ProbeScorer
from mechmerge.recipe.defaults import DEFAULT
from mechmerge.scores import read_scores

from .. import metrics
from .. import store as stored
from ..artifacts import eval_dtype_of, experts, probes_file, publish_dir, write_json
from ..runner import Context, StageStopped, stage


# The default strategy and the conflict-aware one (issue 7 asks for it in the harness); the
# controls (random and task-vector-magnitude scores) are always run with the default strategy.
STRATEGIES = f"{DEFAULT.strategy},conflict"


def write_suite(ctx: Context, path: Path, max_new: int) -> Dict[str, Any]:
    specialists = experts(ctx)
    # absolute: a suite file resolves relative paths against its own folder
    suite = {
        "name": f"{ctx.model.name}-ifeval",
        "base": str(ctx.artifact("import").resolve()),
        "experts": {n: str(p.resolve()) for n, p in specialists.items()},
        "splits": {s: {n: str(probes_file(ctx, n, s).resolve()) for n in specialists} for s in ("score", "dev", "test")},
        "quality": {"test": {"plain": str(probes_file(ctx, "plain", "test").resolve())}},
        "metrics": {n: metrics.name_of(n) for n in specialists},
        "max_new_tokens": max_new,
    }
    write_json(path, suite)
    return suite


def counts(k: int, candidates: int, guided: List[str]) -> Dict[str, int]:
    """Work for one k-expert combination under the harness's protocol (compare.py)."""
    def grid(name: str) -> int:
        return len(list(itertools.product(*strategies.get(name).grid.values())))

    n_guided = len(guided) + 2  # + the random and magnitude controls, both the default strategy
    tuned = 3 + n_guided  # task_arithmetic, ties, dare_ties + guided
    return {"calibration_merges": sum(grid(g) for g in guided) + 2 * grid(DEFAULT.strategy),
            "dev_evals": 1 + tuned * min(candidates, len(TA_GRID)), "test_evals": 1 + tuned, "reference_evals": k + 1}


def estimate(ctx: Context, suite: Dict[str, Any], scores_path: Path, opts: CompareOptions) -> Dict[str, Any]:
    """Time one merge, one calibration candidate, one dev and one test evaluation on the first
    pair, and project the protocol (evaluation cost taken as proportional to the number of tasks)."""
    names = list(suite["experts"])
    pair = tuple(names[:2])
    scores = read_scores(scores_path)
    base = Checkpoint.open(suite["base"], "base")
    tok = load_tokenizer([base])
    model = load_model(base, torch.device("cpu"), resolve_dtype(opts.dtype, torch.device("cpu")))
    t: Dict[str, float] = {}

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def merge() -> None:
        cfg = make_recipe(RecipeOptions(scores=str(scores_path), out="", experts=pair, strategy="uniform",
                                        param={"scale": "0.5"}, method="linear", calibrate=False, progress=False),
                          data=scores, write=False).config
        overwrite_params(params_by_name(model), mk.merge_in_memory(cfg, seed=opts.seed).items())

    # Once untimed: the first merge pays mergekit's imports and first reads (13 s of the 14 s
    # the first SmolLM2 estimate counted for each of a pair's ~90 merges); the harness pays them
    # once per process. Likewise the scorer's model load is not part of a calibration forward.
    merge()
    t["merge"] = timed(merge)
    scorer = ProbeScorer(scores, list(pair), "cpu")
    t["calibration_forward"] = timed(scorer.measure)
    for split, limit in (("dev", opts.max_dev_probes), ("test", opts.max_test_probes)):
        tasks = {n: suite["splits"][split][n] for n in pair}
        mets = {n: suite["metrics"][n] for n in pair}
        if split == "test":
            tasks.update(suite["quality"]["test"])
            mets.update({q: "logprob" for q in suite["quality"]["test"]})
        ev = Evaluator(tasks, tok, mets, batch_size=opts.batch_size, max_new_tokens=suite["max_new_tokens"],
                       max_probes=limit)
        t0 = time.perf_counter()
        ev.run(model, base.family)
        t[f"{split}_eval"] = time.perf_counter() - t0
    return project(t, names, opts, list(pair))


def project(t: Dict[str, float], names: List[str], opts: CompareOptions, pair: List[str]) -> Dict[str, Any]:
    """The protocol's hours from the timed pieces, for the sizes asked."""
    sizes = [int(s) for s in opts.sizes.split(",") if s]
    total, per_k = 0.0, {}
    for k in sizes:
        c = counts(k, opts.candidates, list(opts.strategies_))
        f = k / 2  # evaluation and calibration forwards scale with the number of tasks
        merge = t["merge"] * f
        one = (c["calibration_merges"] * (merge + t["calibration_forward"] * f)
               + c["dev_evals"] * (merge + t["dev_eval"] * f)
               + c["test_evals"] * (merge + t["test_eval"] * f) + c["reference_evals"] * t["test_eval"] * f)
        n_combos = len(list(itertools.combinations(names, k)))
        per_k[k] = {"combinations": n_combos, "per_combination_s": one, **c}
        total += one * n_combos
    return {"measured_s": t, "per_size": per_k, "total_hours": total / 3600, "pair": pair}


def _entries(cache: Path) -> int:
    """Results in the harness's cache (its protocol record aside)."""
    return sum(k != PROTOCOL for k in json.loads(cache.read_text())) if cache.is_file() else 0


@stage("compare", artifact="compare", requires=("finetune", "score"), stamp_work=True,
       volatile=("workers", "partial", "progress", "estimate_only", "batch_size", "sizes"), redo_clears=False,
       store=("results.*", "suite.json", "estimate.json"))
def compare_stage(ctx: Context, out: Path) -> Dict[str, Any]:
    """mechmerge's comparison harness (guided mix and conflict vs tuned uniform merges, random/magnitude controls)."""
    work = ctx.work("compare")
    run_dir = work / "run"
    # a rebuilt score stage has cleared this folder already (the runner's work stamp)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "scores.json").is_file():
        shutil.copyfile(ctx.artifact("score") / "scores.json", run_dir / "scores.json")
    # the per-candidate cache outlives the machine in the committed store (its protocol names the
    # models by their tensors, so specialists rebuilt from their adapters continue it)
    if ctx.store is not None:
        what = stored.seed_work(ctx.store, "compare", "cache.json", run_dir / "cache.json", work / stored.STAMP)
        mirror_file = stored.work_dir(ctx.store, "compare") / "cache.json"
        if what == "seeded":
            ctx.log(f"  continuing from the store's cache ({mirror_file})")
        elif what == "other inputs":
            ctx.log(f"  the store's cache ({mirror_file}) was made from other specialists or scores: not used, "
                    "and replaced by this run's")
    mirror = (stored.Mirror(run_dir / "cache.json", stored.work_dir(ctx.store, "compare") / "cache.json")
              if ctx.store is not None else contextlib.nullcontext())
    max_new = ctx.param("compare.max_new_tokens", 96)
    suite = write_suite(ctx, work / "suite.json", max_new)
    opts = CompareOptions(
        suite=str(work / "suite.json"), out=str(run_dir), sizes=ctx.param("compare.sizes", "2,3"),
        candidates=ctx.param("compare.candidates", 3),
        strategies_=tuple(s for s in ctx.param("compare.strategies", STRATEGIES).split(",") if s),
        score_method="hybrid", seed=ctx.param("compare.seed", 0), batch_size=ctx.param("compare.batch_size", 64),
        max_dev_probes=ctx.param("compare.max_dev_probes", 16) or None,
        max_test_probes=ctx.param("compare.max_test_probes", 32) or None, device="cpu",
        progress=ctx.param("compare.progress", True), workers=ctx.param("compare.workers", 1),
        dtype=str(eval_dtype_of(ctx, "compare")).replace("torch.", ""))
    est_file = work / f"estimate-{opts.sizes}.json"
    earlier = sorted(p for p in work.glob("estimate-*.json") if not p.name.endswith(".first.json"))
    if est_file.is_file():
        est = json.loads(est_file.read_text())
    elif earlier:  # timed for other sizes: the pieces do not depend on them, only the projection
        old = json.loads(earlier[0].read_text())
        est = project(old["measured_s"], list(suite["experts"]), opts, old["pair"])
        write_json(est_file, est)
    else:
        est = estimate(ctx, suite, run_dir / "scores.json", opts)
        write_json(est_file, est)
    ctx.log(f"  estimate: {est['total_hours']:.1f} h for sizes {opts.sizes} "
            f"(one merge {est['measured_s']['merge']:.0f}s, calibration forward {est['measured_s']['calibration_forward']:.0f}s, "
            f"dev eval {est['measured_s']['dev_eval']:.0f}s, test eval {est['measured_s']['test_eval']:.0f}s on a pair)")
    if ctx.param("compare.estimate_only", False):
        raise StageStopped(f"compare.estimate_only: stopped after the estimate ({est_file})")
    if ctx.param("compare.partial", False):
        with mirror:
            part = compare(dataclasses.replace(opts, partial=True, workers=1))["partial"]
        dest = publish_dir(ctx, "compare")
        for f in ("results-partial.md", "results-partial.png"):
            shutil.copyfile(run_dir / f, dest / f)
        raise StageStopped(f"compare.partial: {len(part['complete'])} of {len(part['complete']) + len(part['missing'])} "
                           f"combinations complete, interim table in {dest / 'results-partial.md'}; the stage stays "
                           "incomplete (run it without compare.partial to finish)")
    t0 = time.perf_counter()
    before = _entries(run_dir / "cache.json")
    with mirror:
        data = compare(opts)
    seconds = time.perf_counter() - t0
    # a --redo re-renders from the cache in seconds: say how much of the table this run computed,
    # so its runtime is not read as the comparison's cost
    after = _entries(run_dir / "cache.json")
    shutil.copyfile(work / "suite.json", out / "suite.json")
    write_json(out / "estimate.json", est)
    for f in ("results.md", "results.json", "results.png"):
        shutil.copyfile(run_dir / f, out / f)
    dest = publish_dir(ctx, "compare")
    for f in ("results.md", "results.png"):
        shutil.copyfile(run_dir / f, dest / f)
    s = data["summary"]
    return {"sizes": opts.sizes, "candidates": opts.candidates, "max_dev_probes": opts.max_dev_probes,
            "max_test_probes": opts.max_test_probes, "estimate_hours": est["total_hours"], "seconds_this_run": seconds,
            "cache_entries": {"computed_this_run": after - before, "total": after},
            "mean_test": {m: r["mean"] for m, r in s["methods"].items()},
            "quality": {m: r["quality"] for m, r in s["methods"].items()},
            "claim": s["claim"], "controls": s["controls"],
            "by_size": {k: {"mean_test": {m: r["mean"] for m, r in b["methods"].items()},
                            "quality": {m: r["quality"] for m, r in b["methods"].items()}, "claim": b["claim"]}
                        for k, b in s.get("by_size", {}).items()}}
