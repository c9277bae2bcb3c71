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
