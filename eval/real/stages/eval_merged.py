"""Stage `eval`: the merged models of the `merge` stage on every constraint's test split.

The same evaluator as `eval_experts` (greedy generation through the chat template, the
verifiers, quality = log-probability of the base's own plain answers, confidence quartiles
fixed by the base), so the merged models sit in one table with the base and the specialists.
The guided − uniform difference is paired (same instructions), with its standard error over
all the test instructions of all constraints.

Artifact: results.json, table.md (pass rates, mean over constraints, quality),
quartiles.md (pass rate by the base's confidence band, mean over constraints);
table.md and quartiles.md are also copied to eval/real/results/<model>/merge-eval*.md.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from mechmerge.evaluate.run import QUARTILES
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model

from ..artifacts import publish_dir, write_json
from ..runner import Context, stage
from .eval_experts import QUALITY, test_evaluator
from .recipe import RECIPES


def mean_table(results: Dict[str, Dict[str, Any]], names: List[str]) -> str:
    head = "| model | " + " | ".join(names) + " | mean | quality (log-prob) |"
    lines = [head, "|---|" + "---:|" * (len(names) + 2)]
    for model, r in results.items():
        acc = [r[n]["accuracy"] for n in names]
        lines.append(f"| {model} | " + " | ".join(f"{a:.3f}" for a in acc)
                     + f" | **{np.mean(acc):.3f}** | {r[QUALITY]['logprob']:.4f} |")
    return "\n".join(lines) + "\n"


def quartile_table(results: Dict[str, Dict[str, Any]], names: List[str]) -> str:
    """Pass rate in each band of the base's confidence in the reference answer (Q1 least
    confident), averaged over the constraints: where a merge gains or loses."""
    lines = ["| model | " + " | ".join(QUARTILES) + " |", "|---|" + "---:|" * len(QUARTILES)]
    for model, r in results.items():
        cells = [np.mean([r[n]["quartiles"][q] for n in names if r[n]["quartiles"][q] is not None]) for q in QUARTILES]
        lines.append(f"| {model} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def paired(a: Dict[str, Any], b: Dict[str, Any], names: List[str]) -> Dict[str, float]:
    """Mean of a − b over every test instruction of every constraint, with its standard error."""
    d = np.concatenate([np.asarray(a[n]["correct"], float) - np.asarray(b[n]["correct"], float) for n in names])
    return {"diff": float(d.mean()), "stderr": float(d.std(ddof=1) / np.sqrt(len(d))), "n": int(len(d)),
            "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}


@stage("eval", artifact="eval_merged", requires=("merge", "eval_experts"))
def eval_stage(ctx: Context, out: Path) -> Dict[str, Any]:
    """The guided and uniform merges on every constraint's test split, next to the base and specialists."""
    earlier = json.loads((ctx.artifact("eval_experts") / "results.json").read_text())
    names = earlier["constraints"]
    setup = test_evaluator(ctx, "eval", names)
    if setup.max_new != earlier["max_new_tokens"] or str(setup.dtype).replace("torch.", "") != earlier["dtype"]:
        ctx.log("  note: eval_experts ran with other settings; its rows are shown as they were measured")
    ev, merged = setup.ev, ctx.artifact("merge")
    results = dict(earlier["results"])
    seconds = {}
    for label in RECIPES:
        ck = Checkpoint.open(str(merged / label), label=label)
        t0 = time.perf_counter()
        results[f"{label} merge"] = ev.run(load_model(ck, torch.device("cpu"), setup.dtype), ck.family,
                                           progress=ctx.param("eval.progress", True), label=label)
        seconds[label] = time.perf_counter() - t0
        r = results[f"{label} merge"]
        ctx.log(f"  {label}: " + ", ".join(f"{n} {r[n]['accuracy']:.3f}" for n in names)
                + f", quality {r[QUALITY]['logprob']:.4f} ({seconds[label]:.0f}s)")
    diff = paired(results["guided merge"], results["uniform merge"], names)
    md, qmd = mean_table(results, names), quartile_table(results, names)
    (out / "table.md").write_text(md, encoding="utf-8")
    (out / "quartiles.md").write_text(qmd, encoding="utf-8")
    write_json(out / "results.json", {"constraints": names, "results": results, "guided_minus_uniform": diff,
                                      "seconds": seconds, "dtype": str(setup.dtype).replace("torch.", "")})
    dest = publish_dir(ctx, "eval")
    shutil.copyfile(out / "table.md", dest / "merge-eval.md")
    shutil.copyfile(out / "quartiles.md", dest / "merge-eval-quartiles.md")
    ctx.log("\n" + md + "\n" + qmd + f"\nguided − uniform: {diff['diff']:+.3f} ± {diff['stderr']:.3f} (paired, "
            f"n={diff['n']}; guided alone right on {diff['a_only']}, uniform alone on {diff['b_only']})")
    return {"mean": {m: float(np.mean([r[n]["accuracy"] for n in names])) for m, r in results.items()},
            "quality": {m: r[QUALITY]["logprob"] for m, r in results.items()}, "guided_minus_uniform": diff,
            "seconds": seconds}
