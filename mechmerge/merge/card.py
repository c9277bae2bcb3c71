"""Model cards in the Hub's conventions, explaining what mechmerge measured and merged.

A card is public. It names a model by its Hub id when the reference looks like one and by
its folder name otherwise, never by the user's absolute path; its front matter lists Hub
ids only, because the Hub refuses a README whose `base_model` is not a model id (HTTP 400
at commit time, after the weights were sent). The recipe and the scores keep the full
paths in the output folder (mergekit_config.yml, mechmerge_scores.json): they are the record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .. import __version__

TOP = 5
SCORE_COLUMNS = ("patch_in", "knockout", "anchor")

# An absolute (or home-relative) path inside free text: not preceded by a word character, a
# dot or a slash, so 'a/b', '1/2' and the '//host/x' of a URL are left alone.
ABS_PATH = re.compile(r"(?<![\w./:~-])~?/(?:[\w.@+-]+/)*[\w.@+-]+/?")


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


# ---- naming models in public ----------------------------------------------------------------

def _is_hub_id(path: str) -> bool:
    """mergekit's card.is_hf without its network call: a path that exists here, starts with
    / ~ . or has more than one '/' is a local folder (mergekit loads it from disk); anything
    else that the Hub's own syntax check accepts is a model id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not path or path[0] in "/~." or path.count("/") > 1 or Path(path).expanduser().exists():
        return False
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _parts(ref: str) -> List[str]:
    """The model paths in a mergekit reference: 'model', 'model@revision', 'model+lora'."""
    return [p.split("@")[0] for p in ref.split("+")]


def hub_ids(ref: str) -> List[str]:
    return [p for p in _parts(ref) if _is_hub_id(p)]


def shown(ref: Any) -> str:
    """A model as the card shows it: its Hub id, or its folder name (absolute paths are private)."""
    if not isinstance(ref, str):  # a mapping-form reference: at least no absolute path
        return scrub_paths(str(ref))
    return "+".join(p if _is_hub_id(p.split("@")[0]) else (Path(p).name or p) for p in ref.split("+"))


def scrub_paths(text: str, refs: Iterable[str] = ()) -> str:
    """`text` with local model paths replaced by folder names: the known references first
    (exactly, so a path with spaces goes whole), then any absolute path left."""
    for ref in sorted({r for r in refs if isinstance(r, str) and r}, key=len, reverse=True):
        if shown(ref) != ref:
            text = text.replace(ref, shown(ref))
    return ABS_PATH.sub(lambda m: Path(m.group()).name or m.group(), text)


def model_refs(cfg: Dict[str, Any]) -> List[str]:
    refs = [cfg["base_model"]] if isinstance(cfg.get("base_model"), str) else []
    refs += [m["model"] for m in cfg.get("models") or [] if isinstance(m, dict) and isinstance(m.get("model"), str)]
    return list(dict.fromkeys(refs))


# ---- front matter ---------------------------------------------------------------------------

def parse_front_matter(text: str) -> Any:
    """The YAML between a README's opening '---' lines (None without them); raises
    yaml.YAMLError when it is not valid YAML."""
    return yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None


def _readme_meta(ref: str) -> Dict[str, Any]:
    """The YAML front matter of a model's README: a local folder's, or a Hub model's already in
    the local cache (no download)."""
    path = _parts(ref)[0]
    readme: Optional[Path] = Path(path).expanduser() / "README.md"
    if not readme.is_file():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "README.md") if _is_hub_id(path) else None
        readme = Path(found) if isinstance(found, str) else None
    if readme is None:
        return {}
    try:
        meta = parse_front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _license(refs: Sequence[str]) -> Optional[str]:
    """The inputs' license when every one of them declares the same plain one; a merge of
    differently (or un-) licensed models gets none, for its author to decide."""
    found = [_readme_meta(r).get("license") for r in refs]
    if found and all(isinstance(x, str) for x in found) and len(set(found)) == 1 and found[0] != "other":
        return found[0]
    return None


def front_matter(refs: Sequence[str]) -> str:
    ids = list(dict.fromkeys(i for r in refs for i in hub_ids(r)))
    fm: Dict[str, Any] = {}
    if ids:
        fm["base_model"] = ids
        fm["base_model_relation"] = "merge"
    lic = _license(refs) if refs else None
    if lic:
        fm["license"] = lic
    fm["library_name"] = "transformers"
    fm["tags"] = ["merge", "mergekit", "mechmerge"]
    return "---\n" + yaml.safe_dump(fm, sort_keys=False) + "---\n"


# ---- merge weights per unit, as mergekit resolves them ----------------------------------------

def _weight_resolver(cfg: Dict[str, Any], scores: Dict[str, Any]):
    """weight(model, unit) -> the weights mergekit gives the unit's tensors for `model`.

    Each tensor is resolved by mergekit's own resolver (first filter that is a substring of the
    tensor name wins; gradients interpolate at the tensor's layer, t = layer / (L - 1), and at
    t = 0 outside the layers, as its planner does for a `models:` recipe). None when the units'
    tensors are unknown: head units (their weights are folded into derived experts) or a base
    that is no longer where the scores say."""
    if scores.get("granularity") == "head" or not cfg.get("models"):
        return None
    from mergekit.config import MergeConfiguration
    from mergekit.parameter_resolver import resolve_parameter

    from ..recipe.build import scored_units
    from .engine import method_spec

    base, units = scored_units(scores)
    tensors = {u.name: u.tensors for u in units}
    config = MergeConfiguration.model_validate(cfg)
    spec = next(p for p in method_spec(config.merge_method).parameters if p.name == "weight")
    raw = [m.get("model") for m in cfg["models"]]
    L = base.num_layers

    def t_of(tensor: str) -> float:
        layer = base.family.layer_of(tensor)
        return 0.0 if layer is None else (layer / (L - 1) if L > 1 else 1.0)

    def weight(model: str, unit: str) -> List[float]:
        m = config.models[raw.index(model)]
        out = []
        for t in tensors.get(unit, ()):
            try:
                out.append(resolve_parameter(spec, (m.parameters, config.parameters), tensor_name=t, t=t_of(t),
                                             model=m.model))
            except RuntimeError:  # no entry matches (mergekit's planner would have refused the recipe)
                pass
        return out

    return weight


def _weight_cell(values: List[float]) -> str:
    """One number, or the range when the unit's tensors get different weights."""
    if not values:
        return "–"
    lo, hi = f"{min(values):.3f}", f"{max(values):.3f}"
    return lo if lo == hi else f"{lo} to {hi}"


def _expert_section(name: str, e: Dict[str, Any], key: str, weights) -> List[str]:
    from ..recipe.view import _pick

    # what drove the weights; the controls (random, magnitude) are not stored: rank by patch_in
    rank_by = key if key in SCORE_COLUMNS + ("mean",) else "patch_in"
    rows = sorted(((u, _pick(s, rank_by)) for u, s in e["modules"].items()
                   if any(s.get(k) is not None for k in SCORE_COLUMNS)), key=lambda r: -r[1])
    bl = e["baseline"]
    extra = [] if rank_by in SCORE_COLUMNS else [rank_by]  # `mean` is computed here, not stored
    out = [f"### {name}", "",
           f"Model `{shown(e['model'])}`, probes `{shown(e['probes'])}` ({e['n_probes']} probes, "
           f"{e['n_tokens']} response tokens). "
           f"Mean response log-probability: base {bl['base']:.4f}, expert {bl['expert']:.4f} (gap {bl['gap']:.4f})."
           + ("" if e.get("reliable", True) else " **Unreliable: the expert is not better than the base on its "
                                                 "probes.**"),
           "", f"Units ranked by `{rank_by}`" + (f"; the weights were driven by the `{key}` control, not by these "
                                                 "scores." if rank_by != key else "."), "",
           "| " + " | ".join(["unit", *extra, *SCORE_COLUMNS, "merge weight"]) + " |",
           "|---|" + "---:|" * (len(extra) + len(SCORE_COLUMNS) + 1)]
    for u, v in rows[:TOP]:
        s = e["modules"][u]
        cells = [f"{v:.3f}" for _ in extra] + [f"{s[k]:.3f}" if s.get(k) is not None else "–" for k in SCORE_COLUMNS]
        out.append(f"| `{u}` | {' | '.join(cells)} | {'' if weights is None else _weight_cell(weights(u))} |")
    out.append("")
    return out


# ---- the card -------------------------------------------------------------------------------

def _explained(cfg: Dict[str, Any], scores: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any], str]]:
    """(expert name, its scores, the recipe's model for it) for each scored expert in the merge:
    the expert itself, or (head recipes) the derived expert folded from it, <derive dir>/<name>."""
    models = [m.get("model") for m in cfg.get("models") or [] if isinstance(m.get("model"), str)]
    out = []
    for ename, e in scores["experts"].items():
        model = next((m for m in models if m == e["model"]), None) or next(
            (m for m in models if Path(m).name == ename), None)
        if model is not None:
            out.append((ename, e, model))
    return out


def _inputs(cfg: Dict[str, Any], scores: Optional[Dict[str, Any]]) -> List[str]:
    """Every model the merge came from: the recipe's and, for derived experts, the scored ones."""
    refs = model_refs(cfg) + [e["model"] for _, e, _ in (_explained(cfg, scores) if scores else [])]
    return list(dict.fromkeys(r for r in refs if isinstance(r, str)))


def _recipe_section(recipe_text: str, refs: Sequence[str]) -> List[str]:
    scores_path = scores_path_from_recipe(recipe_text)
    text = scrub_paths(recipe_text.rstrip(), [*refs, *([scores_path] if scores_path else [])])
    return ["## Recipe", "", "Local paths are shortened to folder names here; `mergekit_config.yml` is the recipe "
            "as it ran.", "", "```yaml", text, "```", ""]


def render_card(name: str, recipe_text: str, cfg: Dict[str, Any], scores: Optional[Dict[str, Any]] = None,
                evaluation: Optional[Dict[str, Any]] = None) -> str:
    header = recipe_header(recipe_text)
    strategy = next((h for h in header if h.startswith("strategy:")), "strategy: (not recorded)")
    key = "patch_in"
    m = re.search(r"driven by score: (\w+)", strategy)
    if m:
        key = m.group(1)
    refs = _inputs(cfg, scores)
    lines = [front_matter(refs), f"# {name}", "",
             f"A merge made with [mergekit](https://github.com/arcee-ai/mergekit), its per-module weights chosen by "
             f"mechmerge {__version__} (the package that wrote this card) from Weight Patching scores.", "",
             "## Merge", "",
             f"- Method: `{cfg.get('merge_method')}`" + (f", base `{shown(cfg['base_model'])}`" if cfg.get("base_model")
                                                         else ""),
             f"- Models: {', '.join('`' + shown(m.get('model')) + '`' for m in cfg.get('models') or [])}",
             f"- {scrub_paths(strategy)}"]
    lines += [f"- {scrub_paths(h)}" for h in header if h.startswith(("method:", "calibrated"))]
    lines += ["", "## Why these weights", "",
              "mechmerge copied each module's weights from an expert into the base under the expert's probe prompts "
              "and measured how much of the expert's behaviour came back (`patch_in`), what broke when the module was "
              "reverted inside the expert (`knockout`), and whether the expert's internal state formed at an anchor "
              "layer (`anchor`). 1.0 means the module alone carries all of it. The units each expert carries most:", ""]
    if scores:
        lines += _scores_sections(cfg, scores, key)
    else:
        lines += ["(no scores file was available when this card was written)", ""]
    if evaluation:
        lines += ["## Evaluation", "", _eval_table(evaluation), ""]
    lines += _recipe_section(recipe_text, refs)
    return "\n".join(lines)


def _scores_sections(cfg: Dict[str, Any], scores: Dict[str, Any], key: str) -> List[str]:
    from ..errors import UserError

    try:
        weight = _weight_resolver(cfg, scores)
    except UserError:  # the base moved or changed since scoring: the scores still explain the choice
        weight = None
    out: List[str] = []
    for ename, e, model in _explained(cfg, scores):
        out += _expert_section(ename, e, key, None if weight is None else (lambda u, m=model: weight(m, u)))
    return out


def minimal_card(name: str, recipe_text: str, cfg: Dict[str, Any]) -> str:
    """What `mechmerge merge` writes when the full card fails: the merge is never lost to it."""
    return "\n".join([front_matter([]), f"# {name}", "", f"A merge made with mergekit and mechmerge {__version__}.",
                      "", *_recipe_section(recipe_text, model_refs(cfg))])


def with_evaluation(card: str, evaluation: Dict[str, Any]) -> str:
    """`card` with its Evaluation section set to `evaluation`, where render_card puts it (before
    the recipe): the card `merge --eval` writes, without re-rendering the rest, whose relative
    model paths would resolve against another working directory."""
    card = re.sub(r"\n## Evaluation\n\n.*?\n\n(?=## Recipe\n)", "\n", card, count=1, flags=re.S)
    section = f"## Evaluation\n\n{_eval_table(evaluation)}\n\n"
    i = card.find("\n## Recipe\n")
    return card[: i + 1] + section + card[i + 1:] if i >= 0 else card.rstrip("\n") + "\n\n" + section


def _eval_table(ev: Dict[str, Any]) -> str:
    rows = ["| task | accuracy | log-prob | n | Q1 | Q2 | Q3 | Q4 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task, t in ev.get("tasks", {}).items():
        q = t.get("quartiles", {})
        qs = " | ".join("–" if q.get(k) is None else f"{q[k]:.3f}" for k in ("Q1", "Q2", "Q3", "Q4"))
        rows.append(f"| {task} | {t['accuracy']:.3f} | {t['logprob']:.4f} | {t['n']} | {qs} |")
    return "\n".join(rows)
