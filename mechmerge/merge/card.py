"""Model cards in the Hub's conventions, explaining what mechmerge measured and merged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .. import __version__

TOP = 5


def recipe_header(text: str) -> List[str]:
    return [line[2:] for line in text.splitlines() if line.startswith("# ")]


def header_field(text: str, pattern: str) -> Optional[str]:
    """The first group of `pattern` in the first header line it matches (what `mechmerge recipe`
    records there: the scores file and its hash, the random seed)."""
    for line in recipe_header(text):
        m = re.match(pattern, line)
        if m:
            return m.group(1)
    return None


def scores_path_from_recipe(text: str) -> Optional[str]:
    return header_field(text, r"scores: (.+?) \(sha256")


def scores_sha_from_recipe(text: str) -> Optional[str]:
    return header_field(text, r"scores: .+? \(sha256 ([0-9a-f]{64})\)")


def seed_from_recipe(text: str) -> Optional[int]:
    seed = header_field(text, r"random seed: (-?\d+)")
    return None if seed is None else int(seed)


def _front_matter(cfg: Dict[str, Any]) -> str:
    base = cfg.get("base_model")
    fm: Dict[str, Any] = {}
    if base:
        fm["base_model"] = [base]
    fm["library_name"] = "transformers"
    fm["tags"] = ["merge", "mergekit", "mechmerge"]
    return "---\n" + yaml.safe_dump(fm, sort_keys=False) + "---\n"


def _weights_of(cfg: Dict[str, Any], model: str) -> Dict[str, float]:
    for m in cfg.get("models") or []:
        if m.get("model") == model:
            w = (m.get("parameters") or {}).get("weight")
            if isinstance(w, list):
                return {c["filter"]: c["value"] for c in w if "filter" in c}
            if isinstance(w, (int, float)):
                return {"*": float(w)}
    return {}


def _unit_weight(weights: Dict[str, float], unit: str) -> Optional[float]:
    """The recipe's weight for a unit: its `.weight` tensor's entry, or (a whole-layer unit) the
    entry of any tensor under it, which all carry the unit's weight; None for head units, whose
    weights are folded into derived experts rather than written per tensor."""
    if f"{unit}.weight" in weights:
        return weights[f"{unit}.weight"]
    under = [v for f, v in weights.items() if f.startswith(unit + ".")]
    return under[0] if under else weights.get("*")


def _expert_section(name: str, e: Dict[str, Any], cfg: Dict[str, Any], key: str, model: str) -> List[str]:
    from ..recipe.view import _pick

    weights = _weights_of(cfg, model)
    # what drove the weights; the controls (random, magnitude) are not stored: rank by patch_in
    rank_by = key if key in ("patch_in", "knockout", "anchor", "mean") else "patch_in"
    rows = sorted(((u, _pick(s, rank_by)) for u, s in e["modules"].items()
                   if any(s.get(k) is not None for k in ("patch_in", "knockout", "anchor"))), key=lambda r: -r[1])
    bl = e["baseline"]
    out = [f"### {name}", "",
           f"Model `{e['model']}`, probes `{e['probes']}` ({e['n_probes']} probes, {e['n_tokens']} response tokens). "
           f"Mean response log-probability: base {bl['base']:.4f}, expert {bl['expert']:.4f} (gap {bl['gap']:.4f})."
           + ("" if e.get("reliable", True) else " **Unreliable: the expert is not better than the base on its probes.**"),
           "", f"| unit | {rank_by} | patch_in | knockout | anchor | merge weight |", "|---|---:|---:|---:|---:|---:|"]
    if rank_by != key:
        out[-2:-2] = [f"The weights were driven by the `{key}` control, not by these scores; units by patch_in.", ""]
    for u, v in rows[:TOP]:
        s = e["modules"][u]
        w = _unit_weight(weights, u)
        cells = [f"{s[k]:.3f}" if s.get(k) is not None else "–" for k in ("patch_in", "knockout", "anchor")]
        out.append(f"| `{u}` | {v:.3f} | {' | '.join(cells)} | {'' if w is None else f'{w:.3f}'} |")
    out.append("")
    return out


def render_card(name: str, recipe_text: str, cfg: Dict[str, Any], scores: Optional[Dict[str, Any]] = None,
                evaluation: Optional[Dict[str, Any]] = None) -> str:
    header = recipe_header(recipe_text)
    strategy = next((h for h in header if h.startswith("strategy:")), "strategy: (not recorded)")
    key = "patch_in"
    m = re.search(r"driven by score: (\w+)", strategy)
    if m:
        key = m.group(1)
    lines = [_front_matter(cfg), f"# {name}", "",
             f"A merge made with [mergekit](https://github.com/arcee-ai/mergekit), its per-module weights chosen by "
             f"[mechmerge](https://github.com/) {__version__} from Weight Patching scores.", "",
             "## Merge", "",
             f"- Method: `{cfg.get('merge_method')}`" + (f", base `{cfg['base_model']}`" if cfg.get("base_model") else ""),
             f"- Models: {', '.join('`' + m['model'] + '`' for m in cfg.get('models') or [])}",
             f"- {strategy}", ""]
    lines += [h and f"- {h}" for h in header if h.startswith(("method:", "calibrated"))]
    lines += ["", "## Why these weights", "",
              "mechmerge copied each module's weights from an expert into the base under the expert's probe prompts "
              "and measured how much of the expert's behaviour came back (`patch_in`), what broke when the module was "
              "reverted inside the expert (`knockout`), and whether the expert's internal state formed at an anchor "
              "layer (`anchor`). 1.0 means the module alone carries all of it. The units each expert carries most:", ""]
    if scores:
        models = [m.get("model") for m in cfg.get("models") or [] if isinstance(m.get("model"), str)]
        for ename, e in scores["experts"].items():
            # the expert itself, or (head recipes) the derived expert folded from it: <derive dir>/<name>
            model = next((m for m in models if m == e["model"]), None) or next(
                (m for m in models if Path(m).name == ename), None)
            if model is not None:
                lines += _expert_section(ename, e, cfg, key, model)
    else:
        lines += ["(no scores file was available when this card was written)", ""]
    if evaluation:
        lines += ["## Evaluation", "", _eval_table(evaluation), ""]
    lines += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)


def _eval_table(ev: Dict[str, Any]) -> str:
    rows = ["| task | accuracy | log-prob | n | Q1 | Q2 | Q3 | Q4 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task, t in ev.get("tasks", {}).items():
        q = t.get("quartiles", {})
        qs = " | ".join("–" if q.get(k) is None else f"{q[k]:.3f}" for k in ("Q1", "Q2", "Q3", "Q4"))
        rows.append(f"| {task} | {t['accuracy']:.3f} | {t['logprob']:.4f} | {t['n']} | {qs} |")
    return "\n".join(rows)
