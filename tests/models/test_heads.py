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


def test_a_head_unit_moves_only_its_own_heads(family_base):
    """Checked in the running model, not against the slices themselves: perturbing a head unit's
    q/k/v slices changes the attention output (the input of the output projection) in exactly
    that group's heads, and its output-projection slice is exactly those heads' columns."""
    from transformers import AutoModelForCausalLM

    from mechmerge.models.units import head_groups

    fam, base = family_base
    ck = Checkpoint.open(str(base))
    units = {int(u.name.rsplit(".", 1)[1]): u for u in discover_units(param_order(ck), ck.family, ck.num_layers,
                                                                      "head", ck.config)
             if ".heads." in u.name and u.layer == 0}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    o_proj = next(m for n, m in model.named_modules() if n.endswith(("layers.0.self_attn.o_proj", "h.0.attn.c_proj")))
    o_weight = next(n for n, p in params.items() if p is o_proj.weight)
    seen = []
    o_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 8]])

    def heads_input():
        seen.clear()
        with torch.no_grad():
            model(input_ids=ids)
        return seen[0][0]

    ref = heads_input()
    n_q, n_kv, per = head_groups(ck.config)
    hd = ref.shape[-1] // n_q
    assert sorted(units) == list(range(n_kv))
    g = torch.Generator().manual_seed(0)
    for k, unit in units.items():
        want = torch.zeros(ref.shape[-1], dtype=torch.bool)
        want[k * per * hd:(k + 1) * per * hd] = True
        saved = {s.tensor: params[s.tensor].detach().clone() for s in unit.slices}
        with torch.no_grad():
            for s in unit.slices:
                if s.tensor != o_weight and not s.tensor.startswith(o_weight.rsplit(".", 1)[0]):
                    view = params[s.tensor][s.index()]
                    view += 0.5 * torch.randn(view.shape, generator=g)
        moved = (heads_input() - ref).abs().amax(0) > 1e-6
        assert torch.equal(moved, want), f"{fam} head unit {k}: moved columns {moved.nonzero().flatten().tolist()}"
        o_slices = [s for s in unit.slices if s.tensor == o_weight]
        assert len(o_slices) == 1
        mark = torch.zeros(params[o_weight].shape, dtype=torch.bool)
        mark[o_slices[0].index()] = True
        in_dim = 0 if fam == "gpt2" else 1  # the heads' dimension of the projection (Conv1D is [in, out])
        assert torch.equal(mark.any(dim=1 - in_dim), want), f"{fam} head unit {k}: o columns"
        with torch.no_grad():
            for name, t in saved.items():
                params[name].copy_(t)
