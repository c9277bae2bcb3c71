"""Head-granularity recipes: per-head weights folded into derived experts that stock mergekit merges."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mechmerge.errors import UserError
from mechmerge.merge import engine
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.patching.score import ScoreOptions, score
from mechmerge.recipe.build import RecipeOptions, make_recipe


@pytest.fixture(scope="module")
def head_scores(scored_pair, tmp_path_factory):
    d, module_scores = scored_pair
    data = json.loads(module_scores.read_text())
    out = tmp_path_factory.mktemp("heads") / "heads.json"
    score(ScoreOptions(base=data["base"], experts={e: v["model"] for e, v in data["experts"].items()},
                       probes={e: v["probes"] for e, v in data["experts"].items()}, out=str(out),
                       granularity="head", progress=False))
    return out


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_merged_heads_follow_the_head_weights(head_scores, tmp_path, method):
    out = tmp_path / "r.yaml"
    recipe = make_recipe(RecipeOptions(scores=str(head_scores), out=str(out), strategy="topk", method=method,
                                       param={"k": "3", "background": "0.0"}, progress=False))
    cfg = yaml.safe_load(out.read_text())
    derived = {e: tmp_path / "r.experts" / e for e in recipe.experts}
    assert [m["model"] for m in cfg["models"][:2]] == [str(p) for p in derived.values()]
    merged = engine.merge_in_memory(cfg)
    base = Checkpoint.open(cfg.get("base_model") or cfg["models"][-1]["model"])
    scored = json.loads(head_scores.read_text())["experts"]
    experts = {e: Checkpoint.open(scored[e]["model"]) for e in recipe.experts}
    from mechmerge.models.load import param_order
    from mechmerge.models.units import discover_units

    units = {u.name: u for u in discover_units(param_order(base), base.family, base.num_layers, "head", base.config)}
    w = {e: dict(zip(recipe.units, recipe.weights[i])) for i, e in enumerate(recipe.experts)}
    heads = [u for u in recipe.units if ".heads." in u]
    kept = {e: {u for u in heads if w[e][u] > 0} for e in recipe.experts}
    # top-3 over all units; each planted expert changed one attention module, so keeps some head
    assert all(sum(v > 0 for v in w[e].values()) == 3 for e in recipe.experts)
    assert all(1 <= len(k) < len(heads) for k in kept.values())
    for u in heads:
        for s in units[u].slices:
            b = base.get(s.tensor)[s.index()]
            want = b + sum(w[e][u] * (experts[e].get(s.tensor)[s.index()] - b) for e in recipe.experts)
            torch.testing.assert_close(merged[s.tensor][s.index()], want, atol=1e-6, rtol=1e-5)
            for e in recipe.experts:  # the derived expert: selected heads from the expert, others the base
                got = load_file(derived[e] / "model.safetensors")[s.tensor][s.index()]
                src = experts[e] if u in kept[e] else base
                assert torch.equal(got, src.get(s.tensor)[s.index()])


def test_head_recipe_refuses_calibration_and_existing_derived_dirs(head_scores, tmp_path):
    with pytest.raises(UserError, match="--calibrate is not available"):
        make_recipe(RecipeOptions(scores=str(head_scores), out=str(tmp_path / "a.yaml"), calibrate=True,
                                  progress=False))
    (tmp_path / "b.experts" / "a").mkdir(parents=True)
    (tmp_path / "b.experts" / "a" / "x").write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        make_recipe(RecipeOptions(scores=str(head_scores), out=str(tmp_path / "b.yaml"), strategy="topk",
                                  progress=False))
    assert (tmp_path / "b.experts" / "a" / "x").read_text() == "keep me" and not (tmp_path / "b.yaml").exists()


def test_the_card_of_a_head_merge_explains_each_expert(head_scores, tmp_path):
    """Head recipes list the derived experts, not the scored ones: the card still finds each."""
    from mechmerge.merge.card import render_card

    out = tmp_path / "r.yaml"
    make_recipe(RecipeOptions(scores=str(head_scores), out=str(out), strategy="topk",
                              param={"k": "3", "background": "0.0"}, progress=False))
    text = out.read_text()
    card = render_card("m", text, yaml.safe_load(text), json.loads(head_scores.read_text()))
    assert "### a" in card and "### b" in card and ".heads." in card
