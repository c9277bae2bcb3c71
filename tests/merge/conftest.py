import pytest
from helpers import make_model, plant_expert, write_probes


@pytest.fixture(scope="session")
def scored_pair(tmp_path_factory):
    """A llama base, two planted experts on different units and tasks, and their scores."""
    from mechmerge.patching.score import ScoreOptions, score

    d = tmp_path_factory.mktemp("pair")
    base = make_model("llama", d / "base", seed=3)
    pa = write_probes(d / "a.jsonl", [(f"rev {s}=", s[::-1]) for s in ["abc", "hij", "cad", "bee", "fig", "jab"]])
    pb = write_probes(d / "b.jsonl", [(f"dup {s}=", s + s) for s in ["ab", "ci", "hj", "ee", "fa", "dg"]])
    a = plant_expert(base, d / "a", ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"], pa)
    b = plant_expert(base, d / "b", ["model.layers.1.mlp.down_proj", "model.layers.2.self_attn.q_proj"], pb, seed=1)
    out = d / "scores.json"
    score(ScoreOptions(base=str(base), experts={"a": str(a), "b": str(b)}, probes={"a": str(pa), "b": str(pb)},
                       out=str(out), progress=False))
    return d, out
