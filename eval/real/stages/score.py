"""Stage `score`: Weight Patching scores of every specialist, and a check of the cheap method.

1. `hybrid` (module units, all layers, both directions) for every specialist on its 32
   score probes: first-order attribution for all units, exact patching for each
   direction's top units. Exact patching of everything is 2 x 272 forwards per specialist
   for SmolLM2, too slow for this CPU.
2. `exact` patch_in for one specialist on its first 8 score probes, and `attribution`
   patch_in on the same 8, so agreement can be measured twice: hybrid (32 probes) vs
   exact, and attribution vs exact on the same probes (the method alone).

Every run writes into `.work/score/` with mechmerge's journal (`resume=True`), so a killed
stage continues inside the run it was in; finished runs are reused.

Artifact: scores.json (hybrid, every specialist), exact-<name>.json, attribution-<name>.json,
agreement.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict

from mechmerge.analysis.agreement import compare_expert
from mechmerge.patching.score import ScoreOptions, score

from ..artifacts import experts, probes_file, write_json
from ..runner import Context, stage


def run_scoring(ctx: Context, label: str, opts: ScoreOptions) -> Dict[str, Any]:
    """Run (or resume, or reuse) one scoring; returns {"seconds": ...}."""
    work = ctx.work("score")
    out = work / f"{label}.json"
    timing = work / f"{label}.time.json"
    if out.is_file() and timing.is_file():
        ctx.log(f"  {label}: done earlier")
        return json.loads(timing.read_text())
    opts.out, opts.resume, opts.force = str(out), True, True
    ctx.log(f"  {label}: {opts.method} {opts.direction}, {len(opts.experts)} expert(s), "
            f"{opts.max_probes or 'all'} probes each")
    t0 = time.perf_counter()
    score(opts)
    rec = {"seconds": time.perf_counter() - t0}
    write_json(timing, rec)
    ctx.log(f"  {label}: {rec['seconds']:.0f}s")
    return rec


def agreement(reference: Dict[str, Any], other: Dict[str, Any], expert: str, k: int = 10) -> Dict[str, Any]:
    """Spearman correlation of patch_in over the units that differ, and the share of the top-k
    sets in common: `mechmerge agree`'s numbers, the overlap as the fraction the report prints."""
    def differing(data):
        return [u for u, s in data["experts"][expert]["modules"].items() if not s["identical"]]

    if differing(reference) != differing(other):
        raise ValueError("the two scorings cover different units")
    r = compare_expert(reference["experts"][expert], other["experts"][expert], "patch_in", k)
    return {**r, "top_k_overlap": r["top_k_overlap"] / r["k"]}


@stage("score", artifact="scores", requires=("finetune",), stamp_work=True, volatile=("progress",),
       store=("*.json",))
def score_stage(ctx: Context, out: Path) -> Dict[str, Any]:
    """Weight Patching: hybrid scores of every specialist; exact vs attribution check on one."""
    specialists = experts(ctx)
    base = str(ctx.artifact("import"))
    probes = {n: str(probes_file(ctx, n, "score")) for n in specialists}
    common = dict(base=base, out="", granularity="module", device="cpu", batch_size=ctx.param("score.batch_size", 8),
                  progress=ctx.param("score.progress", True))
    top_k = ctx.param("score.top_k", 10)
    max_probes = ctx.param("score.max_probes", ctx.model.score_probes) or None  # 0: all 32
    one = ctx.param("score.exact_expert", next(iter(specialists)))
    few = ctx.param("score.exact_probes", 8)
    seconds = {}
    seconds["hybrid"] = run_scoring(ctx, "hybrid", ScoreOptions(
        experts={n: str(p) for n, p in specialists.items()}, probes=probes, method="hybrid", direction="both",
        top_k=top_k, max_probes=max_probes, **common))["seconds"]
    for method in ("exact", "attribution"):
        seconds[f"{method}-{one}"] = run_scoring(ctx, f"{method}-{one}", ScoreOptions(
            experts={one: str(specialists[one])}, probes={one: probes[one]}, method=method, direction="patch_in",
            max_probes=few, **common))["seconds"]
    work = ctx.work("score")
    shutil.copyfile(work / "hybrid.json", out / "scores.json")
    for method in ("exact", "attribution"):
        shutil.copyfile(work / f"{method}-{one}.json", out / f"{method}-{one}.json")
    data = {label: json.loads((work / f"{label}.json").read_text())
            for label in ("hybrid", f"exact-{one}", f"attribution-{one}")}
    agree = {"expert": one, "exact_probes": few,
             "hybrid_vs_exact": agreement(data[f"exact-{one}"], data["hybrid"], one),
             "attribution_vs_exact": agreement(data[f"exact-{one}"], data[f"attribution-{one}"], one)}
    write_json(out / "agreement.json", agree)
    hyb = data["hybrid"]["experts"]
    return {"seconds": seconds, "exact_expert": one,
            "agreement": {k: {m: agree[k][m] for m in ("spearman", "top_k_overlap")}
                          for k in ("hybrid_vs_exact", "attribution_vs_exact")},
            "exact_units_in_hybrid": {n: sum(1 for u in e["modules"].values() if u["method"] == "exact")
                                      for n, e in hyb.items()},
            "gap": {n: e["baseline"]["gap"] for n, e in hyb.items()},
            "reliable": {n: e["reliable"] for n, e in hyb.items()}}
