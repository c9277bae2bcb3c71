"""Head granularity: per (grouped-query) head slices cover the attention weights exactly once."""

import torch
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import param_order
from mechmerge.models.units import discover_units


def test_head_slices_cover_every_element_once(family_base):
    fam, base = family_base
    ck = Checkpoint.open(str(base))
    names = param_order(ck)
    units = discover_units(names, ck.family, ck.num_layers, "head", ck.config)
    count = {n: torch.zeros(ck.tensors[n].shape, dtype=torch.int32) for n in names}
    for u in units:
        for s in u.slices:
            count[s.tensor][s.index()] += 1
    for n, c in count.items():
        assert (c == 1).all(), f"{fam}: {n} covered {int(c.min())}..{int(c.max())} times"
    heads = [u for u in units if ".heads." in u.name]
    n_kv = ck.config.get("num_key_value_heads") or ck.config.get("num_attention_heads") or ck.config.get("n_head")
    assert len(heads) == ck.num_layers * n_kv
    assert all(u.category == "attention" and u.layer >= 0 for u in heads)


def test_patching_every_head_unit_recovers_the_expert(planted, probes_file, tmp_path):
    from mechmerge.patching import engine
    from mechmerge.patching.score import ScoreOptions, prepare

    fam, base, expert, _ = planted
    setup = prepare(ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes_file)},
                                 out=str(tmp_path / "s.json"), granularity="head", progress=False))
    b = engine.measure_baseline(setup.runner, setup.batches["x"])
    with setup.swapper.swapped_to(setup.experts["x"], setup.base, setup.param_names):
        e = engine.measure_baseline(setup.runner, setup.batches["x"])
    with setup.swapper.patched(setup.units, setup.experts["x"]):
        allin = engine.measure_baseline(setup.runner, setup.batches["x"])
    assert abs((allin.m - b.m) / (e.m - b.m) - 1.0) < 1e-9


def test_head_note_says_what_a_unit_is():
    from mechmerge.models.units import head_groups, head_info

    def head_note(config):
        return head_info(config)["note"]

    assert head_groups({"num_attention_heads": 9, "num_key_value_heads": 3}) == (9, 3, 3)
    info = head_info({"num_attention_heads": 9, "num_key_value_heads": 3})
    assert (info["query_heads"], info["kv_heads"], info["query_heads_per_unit"]) == (9, 3, 3)
    assert "each its own unit" in head_note({"n_head": 4})  # GPT-2: no grouping
    assert "a group of 3 query heads" in head_note({"num_attention_heads": 9, "num_key_value_heads": 3})
    # Gemma-3-270M: 4 query heads, 1 k/v head: a "head" unit is the layer's whole attention
    assert "whole attention" in head_note({"num_attention_heads": 4, "num_key_value_heads": 1})


def test_head_scores_record_the_grouping(scored_pair, tmp_path, capsys):
    import json

    from mechmerge.patching.score import ScoreOptions, score

    d, _ = scored_pair
    out = tmp_path / "h.json"
    score(ScoreOptions(base=str(d / "base"), experts={"a": str(d / "a")}, probes={"a": str(d / "a.jsonl")},
                       out=str(out), granularity="head", method="attribution", progress=False))
    cfg = json.loads((d / "base" / "config.json").read_text())
    heads = json.loads(out.read_text())["heads"]
    assert heads["query_heads"] == cfg["num_attention_heads"]
    assert heads["kv_heads"] == cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    assert heads["note"] in capsys.readouterr().err
