"""`mechmerge recipe`: scores file -> strategy -> (calibration) -> validated mergekit YAML."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_text, check_inputs, check_output, file_sha256
from ..merge import engine
from ..models.checkpoint import Checkpoint
from ..models.load import param_order
from ..models.units import Unit, discover_units
from ..options import Options, opt
from ..scores import check_expert_name, check_units, read_scores, unit_records
from . import strategies
from .defaults import DEFAULT
from .view import CONTROL_KEYS, SCORE_KEYS, ScoreView
from .writer import build_config, check_resolution, to_yaml


@dataclass
class RecipeOptions(Options):
    scores: str = field(metadata=opt("Scores JSON written by `mechmerge score`.", argument=True, metavar="SCORES"))
    out: str = field(metadata=opt("Where to write the mergekit YAML."))
    strategy: Optional[str] = field(default=None, metadata=opt(
        f"Strategy (default: {DEFAULT.strategy}); see the list below."))
    score: Optional[str] = field(default=None, metadata=opt(
        f"Score that drives the weights: {', '.join(SCORE_KEYS)} (default: {DEFAULT.score}); or a control: "
        f"{', '.join(CONTROL_KEYS)}."))
    method: str = field(default="task_arithmetic", metadata=opt(
        f"mergekit method: {', '.join(engine.SUPPORTED_METHODS)}."))
    param: Dict[str, str] = field(default_factory=dict, metadata=opt(
        "Strategy parameter NAME=VALUE; repeatable.", metavar="NAME=VALUE"))
    method_param: Dict[str, str] = field(default_factory=dict, metadata=opt(
        "mergekit method parameter NAME=VALUE (density, lambda, epsilon, gamma, normalize...); repeatable.",
        metavar="NAME=VALUE"))
    experts: Tuple[str, ...] = field(default=(), metadata=opt(
        "Merge only these experts (repeatable; default: all in the scores file).", flag="expert", metavar="NAME"))
    calibrate: Optional[bool] = field(default=None, metadata=opt(
        "Choose the strategy's scale and parameters on the scoring probes (in-memory merges). "
        "Default: on for the default strategy, off otherwise.", flag="calibrate/--no-calibrate"))
    objective: str = field(default="sequence_accuracy", metadata=opt(
        "Calibration objective on the scoring probes: sequence_accuracy (share of probes answered exactly under "
        "teacher forcing), token_accuracy, or recovery (of the mean log-probability); ties fall to the others."))
    device: str = field(default="auto", metadata=opt("Device for calibration merges and forwards."))
    seed: int = field(default=0, metadata=opt("Seed for random methods (dare_*, della*)."))
    derive_dir: Optional[str] = field(default=None, metadata=opt(
        "Head-granularity scores only: where to write the derived experts the recipe references "
        "(default: RECIPE_STEM.experts/ beside the recipe)."))
    force: bool = field(default=False, metadata=opt("Overwrite an existing recipe (and derived experts)."))
    progress: bool = field(default=True, metadata=opt("Progress bar during calibration."))


@dataclass
class Recipe:
    config: Dict[str, Any]
    text: str
    strategy: str
    params: Dict[str, Any]
    score: str
    weights: np.ndarray  # [experts, units]
    experts: List[str]
    units: List[str]
    calibration: Optional[List[Dict[str, Any]]] = None


def scored_units(data: Dict[str, Any], where: str = "scores", allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> Tuple[Checkpoint, List[Unit]]:
    """The scores' base and its units (at the scores' granularity), after checking that they
    are the units the scores were measured on (names in order, layers, sizes)."""
    base = Checkpoint.open(data["base"], "base", allow_pickle)
    units = discover_units(param_order(base, trust_remote_code), base.family, base.num_layers, data["granularity"],
                           base.config)
    check_units(data, unit_records(base, units), where, data["base"])
    return base, units


def _half_dtype(cfg: Dict[str, Any]) -> Optional[str]:
    """The base's dtype when it is 16-bit: the merge is computed in float32 (the recipe's dtype)
    and written back in the base's, instead of a float32 model twice the size of its inputs."""
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    return dtype if dtype in ("bfloat16", "float16") else None


# mergekit methods whose `normalize` defaults to True (mergekit/merge_methods/registry.py)
NORMALIZING_METHODS = ("ties", "della")
# mergekit methods that draw random masks
RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")


def parse_method_params(method: str, raw: Dict[str, str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split --method-param into (per-model, shared), typed per mergekit's spec."""
    known = engine.parameter_names(method)
    spec = {p.name: p for p in engine.method_spec(method).parameters}
    per_model, shared = {}, {}
    for name, value in raw.items():
        if name == "weight":
            raise UserError("weights come from the strategy; use --param scale=... instead of --method-param weight")
        if name not in known:
            from ..errors import did_you_mean

            raise UserError(f"merge method {method!r} has no parameter {name!r}{did_you_mean(name, known)}; "
                            f"valid: {', '.join(k for k in known if k != 'weight')}")
        try:
            typed = spec[name].validate(value)
        except Exception:
            raise UserError(f"--method-param {name}={value!r}: not a valid {spec[name].value_type.__name__}") from None
        if isinstance(typed, float) and not math.isfinite(typed):
            raise UserError(f"--method-param {name}={value!r}: expected a finite number")
        if name == "density" and not 0 < typed <= 1:  # the share of the task vector kept: mergekit does not check
            raise UserError(f"--method-param density={value!r}: expected a share in (0, 1]")
        (shared if known[name] == "shared" else per_model)[name] = typed
    return per_model, shared


def make_recipe(opts: RecipeOptions, data: Optional[Dict[str, Any]] = None, write: bool = True) -> Recipe:
    if write:
        check_output(opts.out, opts.force, "recipe", inputs=[opts.scores])
    data = data if data is not None else read_scores(opts.scores)
    models = [data["base"], *(e["model"] for e in data["experts"].values())]
    if write:  # known only now: the models, and the probes calibration reads
        check_inputs(opts.out, models + [e["probes"] for e in data["experts"].values()], "recipe", directory=False)
    base, scored = scored_units(data, opts.scores)  # before anything reads the base's tensors
    strat = strategies.get(opts.strategy or DEFAULT.strategy)
    key = opts.score or DEFAULT.score_for(opts.strategy)
    view = ScoreView.from_scores(data, key, seed=opts.seed)
    if opts.experts:
        view = view.subset(list(opts.experts))
    user_params = strat.coerce(dict(opts.param))
    if opts.strategy is None:
        user_params = {**DEFAULT.params_for(None), **user_params}
    if opts.method not in engine.SUPPORTED_METHODS:
        from ..errors import unknown

        raise unknown("merge method", opts.method, engine.SUPPORTED_METHODS)
    per_model, shared = parse_method_params(opts.method, dict(opts.method_param))
    if opts.method in NORMALIZING_METHODS and strat.name != "uniform":
        # mergekit divides these methods' merged delta by the sign-agreeing experts' summed weights,
        # which undoes per-unit weights (a unit only one expert touches comes out at 1 whatever its
        # weight): keep B + sum_e w_e (E_e - B) unless the user asks for mergekit's normalisation
        shared.setdefault("normalize", False)
    if data["granularity"] == "head":
        return _head_recipe(opts, data, base, scored, strat, view, user_params, key, per_model, shared, write)
    out_dtype = _half_dtype(base.config)
    units, unit_tensors = [u.name for u in scored], {u.name: list(u.tensors) for u in scored}
    experts = {e: data["experts"][e]["model"] for e in view.experts}

    def config_for(params: Dict[str, Any]) -> Tuple[Dict[str, Any], np.ndarray]:
        w = strat(view, **params)
        cfg = build_config(method=opts.method, base=data["base"], experts=experts, units=units,
                           unit_tensors=unit_tensors, weights=w, per_model_params=per_model, shared_params=shared,
                           out_dtype=out_dtype)
        return cfg, w

    from .calibrate import OBJECTIVES

    if opts.objective not in OBJECTIVES:
        from ..errors import unknown

        raise unknown("calibration objective", opts.objective, OBJECTIVES)
    calibrate = opts.calibrate if opts.calibrate is not None else (opts.strategy is None and DEFAULT.calibrate)
    table = None
    params = dict(user_params)
    if calibrate:
        from .calibrate import calibrate as run_calibration

        params, table = run_calibration(strat, user_params, config_for, data, view.experts, opts)
    cfg, w = config_for(params)
    check_resolution(cfg, list(base.tensors), units, unit_tensors, w, view.experts)
    engine.validate(cfg)
    header = _header(opts, data, strat.name, params, key, table)
    recipe = Recipe(cfg, to_yaml(cfg, header), strat.name, params, key, w, view.experts, units, table)
    if write:
        atomic_write_text(opts.out, recipe.text)
    return recipe


def _head_recipe(opts: RecipeOptions, data: Dict[str, Any], base: Checkpoint, units: List[Unit], strat,
                 view: ScoreView, params: Dict[str, Any], key: str, per_model: Dict[str, Any], shared: Dict[str, Any],
                 write: bool) -> Recipe:
    """Per-head weights folded into derived experts (see heads.py); no calibration, since
    every candidate would need its own derived experts on disk."""
    from . import heads

    if opts.calibrate:
        raise UserError("--calibrate is not available for head-granularity scores; set the strategy's "
                        "parameters with --param (e.g. --strategy topk --param k=4 --param background=0)")
    if not write:
        raise UserError("head-granularity recipes reference derived experts and must be written to disk")
    out_dtype = _half_dtype(base.config)
    w = strat(view, **params)
    names, unit_tensors, folded = heads.fold_units(units, w)
    out_dir = Path(opts.derive_dir) if opts.derive_dir else Path(opts.out).with_name(Path(opts.out).stem + ".experts")
    for e in view.experts:
        check_expert_name(e, opts.scores)  # in-memory scores did not pass read_scores
        check_output(out_dir / e, opts.force, "derived expert", directory=True, looks_like="config.json",
                     inputs=[opts.scores, data["base"], *(x["model"] for x in data["experts"].values())])

    def config_for(experts: Dict[str, str]) -> Dict[str, Any]:
        return build_config(method=opts.method, base=data["base"], experts=experts, units=names,
                            unit_tensors=unit_tensors, weights=folded, per_model_params=per_model,
                            shared_params=shared, out_dtype=out_dtype)

    # plan with the original experts (same architecture) before anything is written
    cfg = config_for({e: data["experts"][e]["model"] for e in view.experts})
    check_resolution(cfg, list(base.tensors), names, unit_tensors, folded, view.experts)
    engine.validate(cfg)
    cfg = config_for(heads.derive_experts(data, units, view.experts, w, out_dir, force=opts.force))
    header = _header(opts, data, strat.name, params, key, None) + [
        f"head granularity: per-head weights are folded into the derived experts under {out_dir} "
        "(B + w_head (E - B) on each head's q/k/v rows and o columns); attention tensors weigh 1 here"]
    recipe = Recipe(cfg, to_yaml(cfg, header), strat.name, params, key, w, view.experts, list(data["units"]), None)
    atomic_write_text(opts.out, recipe.text)
    return recipe


def _header(opts: RecipeOptions, data: Dict[str, Any], strategy: str, params: Dict[str, Any], key: str,
            table: Optional[List[Dict[str, Any]]]) -> List[str]:
    sha = file_sha256(opts.scores) if Path(opts.scores).is_file() else "(in memory)"
    lines = [
        f"Written by mechmerge {__version__}: `mechmerge recipe`. Runs as is with `mergekit-yaml THIS_FILE OUT_DIR`.",
        f"scores: {opts.scores} (sha256 {sha})",
        f"strategy: {strategy} {_fmt(params)}; driven by score: {key}",
        f"method: {opts.method} {_fmt(dict(opts.method_param))}",
    ]
    if opts.method in RANDOM_METHODS:
        lines.append(f"random seed: {opts.seed} (the {opts.method} masks; `mechmerge merge` reads it from here, "
                     f"`mergekit-yaml --random-seed {opts.seed}` reproduces them)")
    if table:
        best = next(r for r in table if r.get("chosen"))
        lines.append(f"calibrated on the scoring probes over {len(table)} candidates: "
                     f"{opts.objective} {best['objective']:.4f} (per expert: {_fmt(best[opts.objective])}; "
                     f"log-prob recovery {_fmt(best['recovery'])})")
    return lines


def _fmt(d: Dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()) + ")"
