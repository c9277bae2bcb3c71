"""Recipes merge to exactly the per-unit formula, on mergekit's own engine."""

import numpy as np
import pytest
import torch
from mechmerge.errors import UserError
from mechmerge.merge import engine
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import param_order
from mechmerge.models.units import discover_units
from mechmerge.recipe.writer import build_config, check_resolution


def _units(base):
    ck = Checkpoint.open(str(base))
    units = discover_units(param_order(ck), ck.family, ck.num_layers)
    return ck, [u.name for u in units], {u.name: list(u.tensors) for u in units}


def _distinct_weights(n_experts, n_units, seed=0):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-0.5, 1.5, size=(n_experts, n_units)), 3)


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_per_unit_weights_give_the_formula(deep_zoo, method):
    base, experts = deep_zoo
    ck, units, ut = _units(base)
    w = _distinct_weights(2, len(units))
    # the trap: layers.1 and layers.10 get different weights
    cfg = build_config(method=method, base=str(base), experts={k: str(v) for k, v in experts.items()}, units=units,
                       unit_tensors=ut, weights=w, per_model_params={}, shared_params={})
    check_resolution(cfg, list(ck.tensors), units, ut, w, list(experts))
    engine.validate(cfg)
    merged = engine.merge_in_memory(cfg)
    eks = {k: Checkpoint.open(str(v)) for k, v in experts.items()}
    for j, u in enumerate(units):
        for t in ut[u]:
            b = ck.get(t).double()
            expect = b + sum(w[i, j] * (eks[e].get(t).double() - b) for i, e in enumerate(experts))
            assert torch.allclose(merged[t].double(), expect, atol=1e-5), t
    i1 = units.index("model.layers.1.mlp.down_proj")
    i10 = units.index("model.layers.10.mlp.down_proj")
    assert w[0, i1] != w[0, i10]


def test_substring_filters_would_be_caught(deep_zoo):
    base, experts = deep_zoo
    ck, units, ut = _units(base)
    w = _distinct_weights(2, len(units))
    cfg = build_config(method="task_arithmetic", base=str(base), experts={k: str(v) for k, v in experts.items()},
                       units=units, unit_tensors=ut, weights=w, per_model_params={}, shared_params={})
    # a hand-made recipe with a short filter: 'layers.1.' shadows nothing but 'layers.1' shadows layers.10-11
    entries = cfg["models"][0]["parameters"]["weight"]
    entries.insert(0, {"filter": "model.layers.1", "value": 9.0})
    with pytest.raises(UserError, match="resolves to 9.0"):
        check_resolution(cfg, list(ck.tensors), units, ut, w, list(experts))


def test_planner_rejects_bad_recipes(deep_zoo):
    base, experts = deep_zoo
    a = str(experts["a"])
    ok = {"merge_method": "ties", "base_model": str(base), "models": [{"model": a, "parameters": {"weight": 1.0}}]}
    engine.validate(ok)
    typo = {**ok, "models": [{"model": a, "parameters": {"weight": 1.0, "densty": 0.5}}]}
    with pytest.raises(UserError, match="did you mean 'density'"):
        engine.validate(typo)
    missing = {**ok, "models": [{"model": a, "parameters": {"density": 0.5}}]}
    with pytest.raises(UserError, match="weight"):
        engine.validate(missing)
    with pytest.raises(UserError, match="merge method"):
        engine.validate({**ok, "merge_method": "tiez"})
    with pytest.raises(UserError):
        engine.validate({**ok, "models": [{"model": str(base) + "-nope", "parameters": {"weight": 1.0}}]})
