"""Stage `eval_experts`: how well the base and every specialist follow every constraint.

mechmerge's `Evaluator` with the verifiers as metrics (`eval.real.metrics`): greedy
generation through the chat template on each specialist constraint's test split, pass rate
by the verifier; plus quality retention, the mean per-token log-probability of the base's
own plain answers on the plain test questions (teacher forced, metric "logprob": no
generation). Quartiles are fixed by the base. One model at a time, each result kept in
`.work/eval_experts/` so a killed run resumes with the next model.

Artifact: results.json, table.md (rows: models; columns: constraints, quality), examples.json
(the first test prompt of each constraint, answered by its specialist and by the base).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

import torch

from mechmerge.evaluate.generate import greedy_generate
from mechmerge.evaluate.run import Evaluator
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model, load_tokenizer
from mechmerge.probes import load_probes

from .. import metrics
from ..artifacts import eval_dtype_of, experts, probes_file, write_json
from ..runner import Context, stage

QUALITY = "plain"


def table(results: Dict[str, Dict[str, Any]], constraints: List[str], base_quality: float) -> str:
    """Markdown: pass rate per constraint (the specialist's own constraint in bold), quality."""
    head = "| model | " + " | ".join(constraints) + " | quality (log-prob) | Δ quality |"
    lines = [head, "|---|" + "---:|" * (len(constraints) + 2)]
    for model, r in results.items():
        cells = []
        for c in constraints:
            v = f"{r[c]['accuracy']:.3f}"
            cells.append(f"**{v}**" if c == model else v)
        q = r[QUALITY]["logprob"]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {q:.4f} | {q - base_quality:+.4f} |")
    return "\n".join(lines) + "\n"


class TestEval(NamedTuple):
    ev: Evaluator
    tok: Any
    base_model: Any  # the base in `dtype`, which fixed the quartiles
    dtype: torch.dtype
    max_new: int
    tasks: Dict[str, str]


def test_evaluator(ctx: Context, stage_name: str, names: List[str]) -> TestEval:
    """The evaluator of the test splits of `names` plus the quality task, with the confidence
    quartiles fixed by the base (loaded in the stage's eval dtype)."""
    max_new = ctx.param(f"{stage_name}.max_new_tokens", 96)
    limit = ctx.param(f"{stage_name}.max_test", 0) or None
    batch = ctx.param(f"{stage_name}.batch_size", 64)
    tasks = {n: str(probes_file(ctx, n, "test")) for n in names}
    tasks[QUALITY] = str(probes_file(ctx, "plain", "test"))
    bck = Checkpoint.open(str(ctx.artifact("import")), label="base")
    tok = load_tokenizer([bck])
    ev = Evaluator(tasks, tok, {**{n: metrics.name_of(n) for n in names}, QUALITY: "logprob"}, batch_size=batch,
                   max_new_tokens=max_new, max_probes=limit)
    dtype = eval_dtype_of(ctx, stage_name)
    model = load_model(bck, torch.device("cpu"), dtype)
    ev.set_quartiles(model, bck.family)
    return TestEval(ev, tok, model, dtype, max_new, tasks)


@stage("eval_experts", artifact="eval_experts", requires=("finetune",), stamp_work=True,
       volatile=("constraints", "batch_size"), store=("*",))
def eval_experts(ctx: Context, out: Path) -> Dict[str, Any]:
    """Verifier pass rates of base and specialists on every constraint's test split; quality retention."""
    specialists = experts(ctx)
    names = [n for n in ctx.param("eval_experts.constraints", ",".join(specialists)).split(",") if n]
    ev, tok, model, dtype, max_new, tasks = test_evaluator(ctx, "eval_experts", names)
    base_dir = ctx.artifact("import")
    work = ctx.work("eval_experts")
    results, seconds, examples = {}, {}, {}
    first = {n: load_probes(tasks[n], limit=1)[0] for n in names}
    for label, path in [("base", base_dir), *specialists.items()]:
        done = work / f"{label}.json"
        if done.is_file():
            rec = json.loads(done.read_text())
            ctx.log(f"  {label}: done earlier")
        else:
            ck = Checkpoint.open(str(path), label=label)
            if label != "base":
                model = load_model(ck, torch.device("cpu"), dtype)
            t0 = time.perf_counter()
            res = ev.run(model, ck.family)
            own = [n for n in names if n == label] or names
            ex = greedy_generate(model, tok, [first[n] for n in own], max_new, len(own))
            rec = {"results": res, "seconds": time.perf_counter() - t0,
                   "examples": {n: {"prompt": first[n].messages[0][1], "output": o} for n, o in zip(own, ex)}}
            write_json(done, rec)
            ctx.log(f"  {label}: " + ", ".join(f"{n} {res[n]['accuracy']:.3f}" for n in names)
                    + f", quality {res[QUALITY]['logprob']:.4f} ({rec['seconds']:.0f}s)")
        results[label] = rec["results"]
        seconds[label] = rec["seconds"]
        examples[label] = rec["examples"]
    base_q = results["base"][QUALITY]["logprob"]
    md = table(results, names, base_q)
    (out / "table.md").write_text(md, encoding="utf-8")
    write_json(out / "results.json", {"constraints": names, "max_new_tokens": max_new, "quality_task": QUALITY,
                                      "dtype": str(dtype).replace("torch.", ""),
                                      "results": results, "seconds": seconds})
    write_json(out / "examples.json", examples)
    ctx.log("\n" + md)
    return {"pass_rate": {m: {n: r[n]["accuracy"] for n in names} for m, r in results.items()},
            "quality": {m: r[QUALITY]["logprob"] for m, r in results.items()}, "seconds": seconds,
            "n_test": {n: results["base"][n]["n"] for n in names}, "max_new_tokens": max_new}
