"""Stage `report`: eval/real/results/<model>/README.md from the artifacts of the other stages.

Tables (fine-tunes, pass rates and quality, score agreement, the harness's comparison),
copies of the heatmaps (small PNGs), stage runtimes, the commands that made them, and the
hardware. `observations.md` in the same folder (written by a person who looked at the
heatmaps) is included verbatim when it is there. The comparison is included when the
`compare` stage is complete; it is not a requirement, so a model whose comparison was not
run still gets a report.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Dict, List

from ..artifacts import finetune_summary, publish_dir
from ..runner import STAGES, Context, manifest_of, stage


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def runtimes(ctx: Context) -> List[str]:
    # A stage that resumed after an interruption adds up the time of every process that worked
    # on it (the runner's Elapsed; a SIGKILLed process is not counted; resumable stages built
    # before this was recorded say "last process"). The per-item times its summary keeps
    # (per model, per scoring method) are shown next to it.
    lines = ["| stage | runtime | per item, as recorded | torch threads | finished |",
             "|---|---:|---|---:|---|"]
    for name in STAGES.names():
        m = manifest_of(ctx.artifact(name))
        if m and name != "report":
            items = (m.get("summary") or {}).get("seconds")
            per = ", ".join(f"{k} {_hms(v)}" for k, v in items.items()) if isinstance(items, dict) else ""
            every = m.get("all_processes")
            took = _hms(every["seconds"] if every else m.get("seconds", 0.0))
            cached = (m.get("summary") or {}).get("cache_entries")
            if cached and cached["computed_this_run"] < cached["total"]:
                took += f" ({cached['computed_this_run']} of {cached['total']} results computed, the rest cached)"
            if every and every["processes"] > 1:
                took += f" ({every['processes']} processes)"
            elif not every and STAGES.get(name).stamp_work:
                took += " (last process)"
            lines.append(f"| {name} | {took} | {per} | {m.get('threads', '')} | "
                         f"{m.get('finished', '')} |")
    return lines


def finetune_table(ft: Dict[str, Any]) -> List[str]:
    lines = ["| specialist | steps | time | first loss | final loss (last 10) | dev pass rate before → after |",
             "|---|---:|---:|---:|---:|---|"]
    for n, r in ft["records"].items():
        lines.append(f"| {n} | {r['steps']} | {_hms(r['seconds'])} | {r['first_loss']:.3f} | {r['final_loss']:.3f} | "
                     f"{r['dev_before']['pass_rate']:.3f} → **{r['dev_after']['pass_rate']:.3f}** "
                     f"(n={r['dev_after']['n']}) |")
    cfg = next(iter(ft["records"].values()))["config"]
    if cfg.get("lora_rank"):
        kind = (f"LoRA rank {cfg['lora_rank']}, alpha {cfg['lora_alpha']:g} on every linear layer of the blocks "
                "(merged into full weights; the float16 adapters are in `eval/real/store/`), ")
    else:
        kind = f"Full fine-tunes, embeddings {'frozen' if cfg['freeze_embeddings'] else 'trained'}, "
    mixed = "bfloat16 autocast, " if cfg.get("autocast_bf16") else ""
    lines += ["", f"{kind}{mixed}AdamW lr {cfg['lr']}, {cfg['epochs']} epochs, batch {cfg['batch_size']} "
                  f"({cfg['batch_size'] - round(cfg['batch_size'] * cfg['replay'])} constraint examples + "
                  f"{round(cfg['batch_size'] * cfg['replay'])} replayed plain answers), warmup {cfg['warmup']}, cosine to "
                  f"{cfg['min_lr']} x lr, weight decay {cfg['weight_decay']}, clip {cfg['grad_clip']}, seed {ft['seed']}. "
                  "Intermediate checkpoints of "
                  f"`{ft['tracked']}`: " + ", ".join(f"`experts/checkpoints/{c}`" for r in ft["records"].values()
                                                      for c in r["checkpoints"]) + "."]
    return lines


def score_section(ctx: Context, dest: Path) -> List[str]:
    m = manifest_of(ctx.artifact("score"))["summary"]
    agree = json.loads((ctx.artifact("score") / "agreement.json").read_text())
    scores = json.loads((ctx.artifact("score") / "scores.json").read_text())
    lines = ["| specialist | m(E) − m(B) (nats/token) | reliable | units scored exactly |", "|---|---:|---|---:|"]
    for n, e in scores["experts"].items():
        lines.append(f"| {n} | {e['baseline']['gap']:.4f} | {e['reliable']} | {m['exact_units_in_hybrid'][n]} |")
    lines += ["", f"Agreement with exact patch_in for `{agree['expert']}` on its first {agree['exact_probes']} score "
                  "probes (units whose weights differ):", "",
              "| compared with exact | Spearman | top-10 overlap |", "|---|---:|---:|"]
    n_score = next(iter(scores["experts"].values()))["n_probes"]
    for k, label in (("hybrid_vs_exact", f"hybrid, {n_score} probes"),
                     ("attribution_vs_exact", f"attribution, the same {agree['exact_probes']} probes")):
        lines.append(f"| {label} | {agree[k]['spearman']:.3f} | {agree[k]['top_k_overlap']:.1f} |")
    lines += ["", "Scoring time: " + ", ".join(f"{k} {_hms(v)}" for k, v in m["seconds"].items()) + "."]
    prof = json.loads((ctx.artifact("heatmaps") / "profile.json").read_text())["hybrid"]
    cells = sorted({c for p in prof.values() for c in p["share"]})
    lines += ["", "Share of each specialist's positive patch_in score by depth third and unit category (hybrid):", "",
              "| specialist | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    for n, p in prof.items():
        lines.append(f"| {n} | " + " | ".join(f"{p['share'].get(c, 0.0):.2f}" for c in cells) + " |")
    lines += ["", "Top-10 units (hybrid patch_in):", ""]
    for n, p in prof.items():
        lines.append(f"- {n}: " + ", ".join(f"{t['unit'].replace('model.layers.', 'L')} ({t['patch_in']:.2f})"
                                            for t in p["top"]))
    return lines


def merge_section(ctx: Context) -> List[str]:
    """The recipe -> merge -> eval stages: all the specialists merged at once, guided vs tuned uniform."""
    ev = ctx.artifact("eval")
    if not manifest_of(ev):
        return ["The `recipe`, `merge` and `eval` stages have not been run for this model.", ""]
    rec = manifest_of(ctx.artifact("recipe"))["summary"]
    res = json.loads((ev / "results.json").read_text())
    d = res["guided_minus_uniform"]
    lines = ["`mechmerge recipe` on the hybrid scores of all the specialists (`recipe-guided.yaml`, "
             "`recipe-uniform.yaml` in this folder; both run in stock `mergekit-yaml`), `mechmerge merge`, and the "
             "test evaluation of `eval_experts`. Chosen on the scoring probes (teacher-forced calibration):", ""]
    for label, r in rec["recipes"].items():
        # the recipe's own header line says what calibration measured (every objective, per expert)
        header = [x[2:] for x in (ctx.artifact("recipe") / f"{label}.yaml").read_text().splitlines()
                  if x.startswith("# calibrated")]
        lines.append(f"- {label}: `{r['strategy']}` {r['params']} on {r['score']}; " + (header[0] if header else
                                                                                      "not calibrated"))
    lines += ["", (ev / "table.md").read_text().strip(), "",
              f"Guided − uniform, paired over the {d['n']} test instructions: {d['diff']:+.3f} ± {d['stderr']:.3f} "
              f"(guided alone right on {d['a_only']}, uniform alone on {d['b_only']}).", "",
              "Pass rate by the base's confidence in the reference answer (Q1 least confident), mean over constraints:",
              "", (ev / "quartiles.md").read_text().strip(), ""]
    return lines


def heatmap_section(ctx: Context, dest: Path) -> List[str]:
    lines = []
    for kind in ("hybrid", "exact"):
        src = ctx.artifact("heatmaps") / kind
        for png in sorted(src.glob("*.png")) if src.is_dir() else []:
            name = f"{kind}-{png.name}"
            shutil.copyfile(png, dest / name)
            lines += [f"![{kind} {png.stem}]({name})", ""]
    notes = dest / "observations.md"
    if notes.is_file():
        lines += ["**Reading the heatmaps.**", "", notes.read_text().strip(), ""]
    return lines


@stage("report", artifact="report", requires=("finetune", "eval_experts", "score", "heatmaps"))
def report(ctx: Context, out: Path) -> Dict[str, Any]:
    """README.md with tables, heatmaps, runtimes, commands and hardware, in eval/real/results/<model>/."""
    dest = publish_dir(ctx, "report")
    ft = finetune_summary(ctx)
    ev = ctx.artifact("eval_experts")
    model = ctx.model.name
    lines = [f"# {model}: instruction-following specialists merged with mechmerge", "",
             f"{ctx.model.notes}. Everything below ran on CPU: 2 shared cores, torch with 1 thread (another "
             f"engineer's work on the other core), 24 GB RAM, no GPU, no Hub access "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible).", "",
             "## Commands", "", "```",
             f"OMP_NUM_THREADS=1 python -m eval.real.pipeline --model {model} --threads 1    # every stage",
             f"python -m eval.real.pipeline --model {model} --list", "```", "",
             f"Artifacts: `$MECHMERGE_CACHE/real/{model}/`; the small files of every stage (probe sets, LoRA "
             f"adapters, scores, evaluations, the comparison's cache) are kept in `eval/real/store/{model}/`, "
             "from which a fresh machine restores the stages instead of recomputing them. Stage runtimes are "
             "those of the build (a restore takes seconds to a minute).", "",
             "## Stage runtimes", "", *runtimes(ctx), "",
             "## Fine-tuned specialists", "", *finetune_table(ft), "",
             "## Pass rates and quality (test split, greedy, chat template)", "",
             "Rows: models; columns: each constraint's test split, verifier pass rate (the specialist on its own "
             "constraint in bold). Quality: mean per-token log-probability of the base's own plain answers to the "
             "plain test questions (teacher forced); Δ against the base.", "",
             (ev / "table.md").read_text().strip(), "",
             "## Weight Patching scores", "", *score_section(ctx, dest), "",
             "## Heatmaps (`mechmerge plot`)", "", *heatmap_section(ctx, dest),
             "## All the specialists in one merge: guided vs tuned uniform", "", *merge_section(ctx)]
    cmp_dir = ctx.artifact("compare")
    if manifest_of(cmp_dir):
        shutil.copyfile(cmp_dir / "results.md", dest / "results.md")
        if (cmp_dir / "results.png").is_file():
            shutil.copyfile(cmp_dir / "results.png", dest / "results.png")
        est = json.loads((cmp_dir / "estimate.json").read_text())
        s = manifest_of(cmp_dir)["summary"]
        lines += ["## Merging: guided vs tuned uniform baselines (`mechmerge.evaluate.compare`)", "",
                  f"Sizes {s['sizes']}, {s['candidates']} candidates per tuned method chosen on dev "
                  f"({s['max_dev_probes']} probes per task), test on {s['max_test_probes']} probes per task; "
                  f"projected {est['total_hours']:.1f} h from one merge ({est['measured_s']['merge']:.0f}s), one "
                  f"calibration forward ({est['measured_s']['calibration_forward']:.0f}s), one dev "
                  f"({est['measured_s']['dev_eval']:.0f}s) and one test evaluation ({est['measured_s']['test_eval']:.0f}s)"
                  " of a pair.", "", (cmp_dir / "results.md").read_text().strip(), "", "![comparison](results.png)", ""]
    elif (dest / "results-partial.md").is_file():
        lines += ["## Merging: guided vs tuned uniform baselines (interim)", "",
                  f"The `compare` stage has not finished; its interim table (`python -m eval.real.pipeline --model "
                  f"{model} --stages compare --set compare.partial=true`):", "",
                  (dest / "results-partial.md").read_text().strip(), "", "![comparison](results-partial.png)", ""]
    else:
        lines += ["## Merging", "", "The `compare` stage has not been run for this model.", ""]
    text = "\n".join(lines) + "\n"
    (dest / "README.md").write_text(text, encoding="utf-8")
    (out / "README.md").write_text(text, encoding="utf-8")
    return {"readme": str(dest / "README.md")}
