"""Unit discovery from parameter names across families."""

import pytest
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import param_order
from mechmerge.models.units import discover_units


def _units(base, granularity="module"):
    ck = Checkpoint.open(str(base))
    return ck, discover_units(param_order(ck), ck.family, ck.num_layers, granularity, ck.config)


def test_module_units_cover_every_parameter_once(family_base):
    fam, base = family_base
    ck, units = _units(base)
    covered = [s.tensor for u in units for s in u.slices]
    assert sorted(covered) == sorted(param_order(ck))
    assert len(covered) == len(set(covered))
    names = [u.name for u in units]
    assert not any(n.endswith((".weight", ".bias")) for n in names)
    # model order: embeddings first, blocks in order, tail last
    layers = [u.layer for u in units]
    assert layers == sorted(layers)
    assert layers[0] == -1 and layers[-1] == ck.num_layers


def test_tied_lm_head_is_not_a_unit(family_base):
    fam, base = family_base
    ck, units = _units(base)
    names = {u.name for u in units}
    if ck.tied_embeddings:
        assert "lm_head" not in names
    else:
        assert "lm_head" in names


def test_layer_granularity_is_whole_blocks(family_base):
    fam, base = family_base
    ck, units = _units(base, "layer")
    blocks = [u for u in units if u.kind == "block"]
    assert len(blocks) == ck.num_layers
    ck2, mods = _units(base, "module")
    per_block = [sum(len(u.slices) for u in mods if u.layer == L) for L in range(ck.num_layers)]
    assert [len(b.slices) for b in blocks] == per_block


@pytest.mark.parametrize("fam_name", ["llama"])
def test_llama_names(fam_name, models_dir):
    from helpers import make_model

    base = make_model("llama", models_dir / "names-llama", layers=2)
    ck, units = _units(base)
    names = [u.name for u in units]
    assert names[:3] == ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert "model.layers.1.mlp.down_proj" in names
    assert names[-2:] == ["model.norm", "lm_head"]
    cats = {u.name: u.category for u in units}
    assert cats["model.layers.0.input_layernorm"] == "norm"
    assert cats["model.layers.0.mlp.up_proj"] == "mlp"
    assert cats["model.layers.0.self_attn.o_proj"] == "attention"
    assert cats["model.embed_tokens"] == "embedding"
