"""The card's merge weights are the ones mergekit applies; no recipe mergekit runs costs the merge
its card, nor the card the merge; a linear merge's config and tokenizer come from the base."""

import copy
import json
import shutil

import pytest
import torch
import yaml

from mechmerge.cli import main

DOWN, V = "model.layers.1.mlp.down_proj", "model.layers.0.self_attn.v_proj"  # planted in a: A != B there


def run_cli(*args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code


def _one_expert(d, weight):
    return {"merge_method": "task_arithmetic", "base_model": str(d / "base"), "dtype": "float32",
            "models": [{"model": str(d / "a"), "parameters": {"weight": weight}}]}


def _cell(card, expert, unit):
    """The merge-weight cell of `unit` in `expert`'s table."""
    section = card.split(f"### {expert}\n", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| `{unit}` |"))
    return row.rstrip(" |").rsplit("|", 1)[1].strip()


def _applied(merged, d, unit):
    """The weight mergekit gave expert a on `unit`: M = B + w (A - B), solved by least squares."""
    from mechmerge.models.checkpoint import Checkpoint

    t = f"{unit}.weight"
    b, a = Checkpoint.open(str(d / "base")).get(t).double(), Checkpoint.open(str(d / "a")).get(t).double()
    delta = a - b
    return float(((merged[t].double() - b) * delta).sum() / (delta * delta).sum())


@pytest.mark.parametrize("weight,down,v", [
    # a filter is a substring and the first match wins: 'layers.1.' shadows the exact entry after it
    ([{"filter": "layers.1.", "value": 0.111}, {"filter": f"{DOWN}.weight", "value": 0.5}, {"value": 0.25}],
     "0.111", "0.250"),
    ([{"filter": "mlp.down_proj", "value": 0.3}, {"value": 0.9}], "0.300", "0.900"),  # substring only, catch-all
    ([0.2, 0.8], "0.500", "0.200"),  # a gradient over the 3 layers: t = layer / 2
    ([{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.4}], "0.400", "0.000"),  # a gradient in a filter
])
def test_the_card_shows_the_weight_mergekit_applies(scored_pair, weight, down, v):
    from mechmerge.merge.card import render_card
    from mechmerge.merge.engine import merge_in_memory

    d, scores = scored_pair
    cfg = _one_expert(d, weight)
    card = render_card("m", yaml.safe_dump(cfg), cfg, json.loads(scores.read_text()))
    assert (_cell(card, "a", DOWN), _cell(card, "a", V)) == (down, v), card
    merged = merge_in_memory(cfg)
    assert _applied(merged, d, DOWN) == pytest.approx(float(down), abs=1e-4)
    assert _applied(merged, d, V) == pytest.approx(float(v), abs=1e-4)


def test_a_unit_whose_tensors_differ_shows_the_range(scored_pair):
    """A whole-layer unit resolved tensor by tensor: its mlp at one weight, the rest at another."""
    from mechmerge.merge.card import render_card
    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import param_order
    from mechmerge.models.units import discover_units
    from mechmerge.scores import unit_records

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    layer = copy.deepcopy(data)
    layer["granularity"] = "layer"
    base = Checkpoint.open(data["base"])  # the card names no unit of scores made on another model
    layer["units"] = unit_records(base, discover_units(param_order(base), base.family, base.num_layers, "layer"))
    layer["experts"] = {"a": {**data["experts"]["a"], "modules": {
        u: {"patch_in": 0.5, "knockout": 0.4, "anchor": None} for u in layer["units"]}}}
    cfg = _one_expert(d, [{"filter": "mlp.", "value": 0.3}, {"value": 0.9}])
    assert _cell(render_card("m", yaml.safe_dump(cfg), cfg, layer), "a", "model.layers.1") == "0.300 to 0.900"


def test_a_gradient_recipe_merges_with_its_card_and_a_failing_card_costs_no_merge(scored_pair, tmp_path,
                                                                                   monkeypatch, capsys):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_one_expert(d, [0.2, 0.8])))
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m"), "--scores", str(scores)) == 0
    card = (tmp_path / "m" / "README.md").read_text()
    assert _cell(card, "a", DOWN) == "0.500"

    from mechmerge.merge import run

    def broken(*a, **k):
        raise TypeError("a card bug")

    monkeypatch.setattr(run, "render_card", broken)
    capsys.readouterr()
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m2"), "--scores", str(scores)) == 0
    assert "model card could not be written in full (TypeError: a card bug)" in capsys.readouterr().err
    card = (tmp_path / "m2" / "README.md").read_text()
    assert "## Recipe" in card and (tmp_path / "m2" / "model.safetensors").is_file()
    assert str(d) not in card


def test_a_linear_merge_takes_config_and_tokenizer_from_the_base(scored_pair, tmp_path, monkeypatch, capsys):
    """mergekit copies config.json and the tokenizer from base_model, else from
    referenced_models()[0], a set's order (the hash seed's choice): here made the worst case,
    the base last. The weights are the same with or without base_model."""
    from mergekit.config import MergeConfiguration

    from mechmerge.merge.engine import merge_in_memory
    from mechmerge.recipe.build import RecipeOptions, make_recipe

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    for m in ("base", "a", "b"):
        shutil.copytree(d / m, tmp_path / m)
    for m in ("a", "b"):  # mark the experts' files, to see which input the output's came from
        for f in ("config.json", "tokenizer_config.json"):
            (tmp_path / m / f).write_text(json.dumps({**json.loads((tmp_path / m / f).read_text()), "marker": m}))
        data["experts"][m]["model"] = str(tmp_path / m)
    data["base"] = str(tmp_path / "base")
    r = make_recipe(RecipeOptions(scores=str(scores), out="", strategy="share", method="linear", calibrate=False,
                                  progress=False), data=data, write=False)
    assert r.config["base_model"] == str(tmp_path / "base")
    no_base = {k: v for k, v in r.config.items() if k != "base_model"}
    with_base, without = merge_in_memory(r.config), merge_in_memory(no_base)
    assert with_base.keys() == without.keys() and all(torch.equal(with_base[k], without[k]) for k in with_base)

    order = MergeConfiguration.referenced_models
    monkeypatch.setattr(MergeConfiguration, "referenced_models",
                        lambda self: sorted(order(self), key=lambda m: m.model.path.endswith("/base")))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(r.text)
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m")) == 0
    for f in ("config.json", "tokenizer_config.json"):
        assert "marker" not in json.loads((tmp_path / "m" / f).read_text()), f
    # a recipe without base_model (hand-written, or written before) is merged with a warning
    (tmp_path / "no_base.yaml").write_text(yaml.safe_dump(no_base))
    capsys.readouterr()
    assert run_cli("merge", str(tmp_path / "no_base.yaml"), "--out", str(tmp_path / "m2")) == 0
    assert "no_base.yaml has no base_model: mergekit takes config.json and the tokenizer from an arbitrary input" in (
        capsys.readouterr().err)
