"""Tables and plots for the comparison harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..report.figures import pyplot, save

BASELINES = ("linear", "task_arithmetic", "ties", "dare_ties")
CLAIM_MARGIN, CLAIM_WORST = 0.03, -0.02


def _combo_acc(test: Dict[str, Any], tasks: List[str]) -> tuple[float, float]:
    """(mean accuracy over tasks, its binomial standard error)."""
    ps = [test[t]["accuracy"] for t in tasks]
    var = sum(p * (1 - p) / max(test[t]["n"], 1) for p, t in zip(ps, tasks))
    return float(np.mean(ps)), float(np.sqrt(var) / len(ps))


def summarize(results: Dict[str, Dict[str, Any]], suite, default: str) -> Dict[str, Any]:
    combos = list(results)
    methods = [m for m in next(iter(results.values())) if not m.startswith("expert:")]
    rows: Dict[str, Dict[str, Any]] = {}
    retention_tasks = list(suite.retention.get("test", {}))
    quality_tasks = list(getattr(suite, "quality", {}).get("test", {}))
    for m in methods + ["experts"]:
        per, se, ret, qual = {}, {}, [], []
        for c in combos:
            tasks = c.split("+")
            if m == "experts":  # each expert on its own task: the ceiling a merge aims for
                test = {t: results[c][f"expert:{t}"]["test"][t] for t in tasks}
                ret_tests = [results[c][f"expert:{t}"]["test"] for t in tasks]
            else:
                test = results[c][m]["test"]
                ret_tests = [test]
            per[c], se[c] = _combo_acc(test, tasks)
            for rt in ret_tests:
                ret += [rt[t]["accuracy"] for t in retention_tasks if t in rt]
                qual += [rt[t]["logprob"] for t in quality_tasks if t in rt]
        vals = np.array(list(per.values()))
        rows[m] = {"per_combination": per, "stderr": se, "mean": float(vals.mean()),
                   "mean_stderr": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0,
                   "retention": float(np.mean(ret)) if ret else None,
                   "quality": float(np.mean(qual)) if qual else None}
    present = [b for b in BASELINES if b in rows]
    best = max(present, key=lambda b: rows[b]["mean"]) if present else None
    claim = None
    if best and default in rows:
        diffs = {c: rows[default]["per_combination"][c] - rows[best]["per_combination"][c] for c in combos}
        margin = rows[default]["mean"] - rows[best]["mean"]
        claim = {"default": default, "best_baseline": best, "margin": margin, "worst_combination": min(diffs.values()),
                 "per_combination": diffs,
                 "holds": bool(margin >= CLAIM_MARGIN and min(diffs.values()) >= CLAIM_WORST),
                 "paired": paired(results, default, best)}
    controls = None
    if default in rows:
        controls = {c: {"mean": rows[c]["mean"], "beaten": bool(rows[default]["mean"] > rows[c]["mean"])}
                    for c in rows if c.startswith("control:")}
    out = {"methods": rows, "claim": claim, "controls": controls}
    sizes = sorted({_size(c) for c in combos})
    if len(sizes) > 1:  # a mean over pairs and triples together can hide a strategy that only wins one of them
        out["by_size"] = {k: summarize({c: results[c] for c in combos if _size(c) == k}, suite, default)
                          for k in sizes}
    return out


def paired(results: Dict[str, Dict[str, Any]], a: str, b: str) -> Dict[str, Any] | None:
    """a − b over the same test instructions of every combination's tasks (not the claim's mean over
    combinations: a triple weighs three tasks here); None when an entry holds no per-instruction
    results (cached before the harness kept them)."""
    da, db = [], []
    for c, r in results.items():
        for t in c.split("+"):
            ca, cb = r[a]["test"][t].get("correct"), r[b]["test"][t].get("correct")
            if not ca or not cb or len(ca) != len(cb):
                return None
            da += ca
            db += cb
    x, y = np.array(da, dtype=float), np.array(db, dtype=float)
    d = x - y
    return {"n": len(d), "diff": float(d.mean()),
            "stderr": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
            "a_only": int(((x == 1) & (y == 0)).sum()), "b_only": int(((x == 0) & (y == 1)).sum())}


def _size(combo: str) -> int:
    return combo.count("+") + 1


SIZE_NAMES = {2: "pairs", 3: "triples"}


def _by_size(by: Dict[int, Dict[str, Any]]) -> List[str]:
    """The same summary per combination size: one table, then the claim per size."""
    names = [SIZE_NAMES.get(int(k), f"{k}-way") for k in by]  # int(): keys are str once read back from JSON
    first = next(iter(by.values()))["methods"]
    has_q = any(r.get("quality") is not None for r in first.values())
    cols = "".join(f" {n} ({len(next(iter(b['methods'].values()))['per_combination'])}) |"
                   + (f" {n} quality |" if has_q else "") for n, b in zip(names, by.values()))
    lines = ["", "By combination size (means over the combinations of each size):", "", "| method |" + cols,
             "|---|" + "---:|" * (len(by) * (1 + has_q))]
    for m in first:
        cells = ""
        for b in by.values():
            r = b["methods"][m]
            cells += f" {r['mean']:.3f} ± {r['mean_stderr']:.3f} |"
            if has_q:
                cells += " – |" if r.get("quality") is None else f" {r['quality']:.3f} |"
        lines.append(f"| {m} |{cells}")
    lines.append("")
    for n, b in zip(names, by.values()):
        c = b["claim"]
        if c:
            lines.append(f"- {n}: {c['default']} vs {c['best_baseline']} (the best baseline on {n}): margin "
                         f"{_points(c['margin'], CLAIM_MARGIN)} points, worst combination "
                         f"{_points(c['worst_combination'], CLAIM_WORST)} points: "
                         + ("holds" if c["holds"] else "does not hold")
                         + (f"; paired over {c['paired']['n']} instructions {c['paired']['diff']:+.3f} ± "
                            f"{c['paired']['stderr']:.3f}" if c.get("paired") else "") + ".")
    return lines


def _points(x: float, threshold: float) -> str:
    """x in points, to one decimal unless that would round it onto its threshold (a margin of
    2.96 points printed as +3.0 next to DOES NOT HOLD)."""
    close = abs(100 * (x - threshold)) < 0.05
    return f"{100 * x:+.2f}" if close else f"{100 * x:+.1f}"


def markdown(data: Dict[str, Any]) -> str:
    s = data["summary"]
    rows = s["methods"]
    combos = list(next(iter(rows.values()))["per_combination"])
    has_q = any(r.get("quality") is not None for r in rows.values())
    head = "| method | " + " | ".join(combos) + " | mean ± s.e. | retention |" + (" quality |" if has_q else "")
    lines = [f"Suite `{data['suite']}`: held-out (test) accuracy per combination; "
             f"{data['protocol']['candidates']} candidate merges per tuned method chosen on dev. Retention: accuracy "
             f"on the base's general skills" + ("; quality: mean log-probability of the base's own answers" if has_q
                                               else "") + ".", "", head,
             "|---|" + "---:|" * (len(combos) + 2 + has_q)]
    part = data.get("partial")
    if part:  # interim results: say so before anything else
        lines[:0] = [f"**Partial: {len(part['complete'])} of {len(part['complete']) + len(part['missing'])} "
                     f"combinations complete** (missing: {', '.join(part['missing']) or 'none'}); means and the "
                     "claim below are over the complete ones only.", ""]
    for m, r in rows.items():
        cells = " | ".join(f"{r['per_combination'][c]:.3f}" for c in combos)
        ret = "–" if r["retention"] is None else f"{r['retention']:.3f}"
        q = (" – |" if r.get("quality") is None else f" {r['quality']:.3f} |") if has_q else ""
        name = f"**{m}**" if s["claim"] and m == s["claim"]["default"] else m
        lines.append(f"| {name} | {cells} | {r['mean']:.3f} ± {r['mean_stderr']:.3f} | {ret} |{q}")
    c = s["claim"]
    if c:
        verdict = "HOLDS" if c["holds"] else "DOES NOT HOLD"
        lines += ["", f"Claim ({c['default']} beats the best tuned uniform baseline, {c['best_baseline']} (the "
                      "baseline with the highest test mean: the strongest opponent, so the test is conservative), by "
                      f">= 3 points on the mean and is never > 2 points worse): **{verdict}** — margin "
                      f"{_points(c['margin'], CLAIM_MARGIN)} points, worst combination "
                      f"{_points(c['worst_combination'], CLAIM_WORST)} points."]
        p = c.get("paired")
        lines += ["", (f"Paired over the same {p['n']} test instructions: {c['default']} − {c['best_baseline']} = "
                       f"{p['diff']:+.3f} ± {p['stderr']:.3f} ({c['default']} alone right on {p['a_only']}, "
                       f"{c['best_baseline']} alone on {p['b_only']})." if p else
                       "No paired test: some results were cached without their per-instruction answers.")]
    ctl = s.get("controls")
    if ctl and c:
        parts = [f"{k.split(':')[1]} {v['mean']:.3f}" for k, v in ctl.items()]
        beaten = all(v["beaten"] for v in ctl.values())
        lines += ["", f"Controls (the default strategy, calibrated the same way, driven by random scores (one seed) "
                      f"or by each unit's task-vector magnitude instead of the mechanism's; means): "
                      f"{', '.join(parts)} vs mechanism "
                      f"{rows[c['default']]['mean']:.3f}: the mechanism "
                      + ("beats both controls." if beaten else "**does not beat its controls**.")]
    if s.get("by_size"):
        lines += _by_size(s["by_size"])
    return "\n".join(lines) + "\n"


def write_report(data: Dict[str, Any], out: Path, stem: str = "results") -> None:
    from ..io import atomic_write_text

    atomic_write_text(out / f"{stem}.md", markdown(data))
    plot(data, out / f"{stem}.png")


# guided strategies, the uniform baselines they must beat, the controls (random or magnitude
# scores through the guided strategy) and the references, each family in one colour
COLORS = {"guided": "#4c72b0", "baseline": "#dd8452", "control": "#55a868", "reference": "#999999"}


def family(method: str) -> str:
    if method.startswith("guided"):
        return "guided"
    if method.startswith("control"):
        return "control"
    return "reference" if method in ("base", "experts") else "baseline"


def plot(data: Dict[str, Any], path: Path) -> None:
    plt = pyplot()

    rows = data["summary"]["methods"]
    names = list(rows)
    combos = list(rows[names[0]]["per_combination"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15.5, 4.8), gridspec_kw={"width_ratios": [1, 2.4]})
    means = [rows[m]["mean"] for m in names]
    errs = [rows[m]["mean_stderr"] for m in names]
    colors = [COLORS[family(m)] for m in names]
    a1.barh(names, means, xerr=errs, color=colors)
    a1.invert_yaxis()
    a1.set_xlabel("mean test accuracy over combinations (± s.e.)")
    a1.set_xlim(0, 1)
    width = 0.8 / len(names)
    x = np.arange(len(combos))
    for i, m in enumerate(names):
        a2.bar(x + i * width, [rows[m]["per_combination"][c] for c in combos], width,
               yerr=[rows[m]["stderr"][c] for c in combos], label=m, color=colors[i],
               alpha=0.5 + 0.5 * (i / max(1, len(names) - 1)))
    a2.set_xticks(x + 0.4 - width / 2)
    a2.set_xticklabels(combos, rotation=30, ha="right")
    a2.set_ylabel("test accuracy")
    a2.set_ylim(0, 1)
    # outside the axes: inside, it covered the bars of the strongest combinations
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    part = data.get("partial")
    fig.suptitle(f"{data['suite']}: guided (blue) vs uniform baselines (orange), controls (green)"
                 + (f"; partial: {len(combos)} of {len(combos) + len(part['missing'])} combinations" if part else ""))
    save(fig, path)
