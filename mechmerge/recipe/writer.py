"""Per-unit weights -> a mergekit configuration that stock `mergekit-yaml` runs as it is.

mergekit matches a parameter `filter` as a plain substring of the tensor name and the
first match wins, so we write one entry per tensor with its full name
(`model.layers.1.mlp.down_proj.weight`), embeddings and lm_head included, and a
catch-all last. After building, every tensor of the base is resolved with mergekit's
own `evaluate_setting` and must get exactly the weight we meant: a filter that
shadows another (the `layers.1.` / `layers.10.` trap) can never reach disk.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import yaml

from ..errors import UserError

DIGITS = 6  # weights are written rounded; the check below compares the rounded values


def _r(x: float) -> float:
    v = round(float(x), DIGITS)
    return 0.0 if v == 0 else v


def weight_setting(unit_tensors: Mapping[str, Sequence[str]], units: Sequence[str], w: np.ndarray,
                   default: float) -> Any:
    """The `weight` parameter for one expert: a scalar when constant, else per-tensor entries."""
    vals = [_r(x) for x in w]
    if len(set(vals)) == 1 and vals[0] == _r(default):
        return vals[0]
    entries: List[Dict[str, Any]] = []
    for unit, v in zip(units, vals):
        for t in unit_tensors[unit]:
            entries.append({"filter": t, "value": v})
    entries.append({"value": _r(default)})
    return entries


def build_config(
    *,
    method: str,
    base: str,
    experts: Mapping[str, str],
    units: Sequence[str],
    unit_tensors: Mapping[str, Sequence[str]],
    weights: np.ndarray,
    per_model_params: Mapping[str, Any],
    shared_params: Mapping[str, Any],
    dtype: str = "float32",
    out_dtype: str | None = None,
) -> Dict[str, Any]:
    """weights: [experts, units] task-vector weights (rows in `experts` order)."""
    names = list(experts)
    models: List[Dict[str, Any]] = []
    for i, name in enumerate(names):
        params: Dict[str, Any] = {"weight": weight_setting(unit_tensors, units, weights[i], float(np.mean(weights[i])))}
        params.update(per_model_params)
        models.append({"model": experts[name], "parameters": params})
    shared = dict(shared_params)
    if method == "linear":
        # linear has no base: weight the base by 1 - sum(w) so the result is
        # B + sum_e w_e (E_e - B) per unit, the same task-vector reading as the other methods.
        base_w = 1.0 - weights.sum(0)
        models.append({"model": base, "parameters": {
            "weight": weight_setting(unit_tensors, units, base_w, float(np.mean(base_w)))}})
        shared.setdefault("normalize", False)
    # linear ignores base_model in its arithmetic (the base is one of its weighted models), but
    # mergekit takes the merged model's config.json, tokenizer and generation_config from the
    # base_model, and without one from referenced_models()[0]: a set, ordered by the hash seed
    cfg: Dict[str, Any] = {"merge_method": method, "base_model": base}
    cfg["dtype"] = dtype
    if out_dtype and out_dtype != dtype:
        cfg["out_dtype"] = out_dtype
    if shared:
        cfg["parameters"] = dict(shared)
    cfg["models"] = models
    return cfg


def check_resolution(cfg: Dict[str, Any], tensors: Sequence[str], units: Sequence[str],
                     unit_tensors: Mapping[str, Sequence[str]], weights: np.ndarray, experts: Sequence[str]) -> None:
    """Resolve every tensor's weight with mergekit's own matcher and compare."""
    from mergekit.config import evaluate_setting

    want: Dict[str, Dict[str, float]] = {e: {} for e in experts}
    for j, unit in enumerate(units):
        for t in unit_tensors[unit]:
            for i, e in enumerate(experts):
                want[e][t] = _r(weights[i, j])
    for i, e in enumerate(experts):
        setting = cfg["models"][i]["parameters"]["weight"]
        if not isinstance(setting, list):
            setting = [{"value": setting}]
        from mergekit.config import ConditionalParameter

        conds = [ConditionalParameter(**c) for c in setting]
        for t in tensors:
            got = evaluate_setting(t, conds, 0.0, validate=float)
            if t in want[e] and got != want[e][t]:
                raise UserError(f"internal: recipe filter for {t!r} resolves to {got}, expected {want[e][t]} "
                                f"(expert {e!r}); please report this")


def to_yaml(cfg: Dict[str, Any], header: Sequence[str]) -> str:
    body = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=1000, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header) + body
