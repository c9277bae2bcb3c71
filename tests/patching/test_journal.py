"""The scoring journal's edges: a record cut off by a kill, and what --resume checks."""

import json

import torch

from mechmerge.patching.engine import Measurement
from mechmerge.patching.journal import Journal
from mechmerge.patching.score import ScoreOptions, fingerprint


def test_a_line_cut_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "s.json.journal"
    j = Journal(path, "fp", resume=False)
    j.add("x", "patch_in", "u1", 0, Measurement(-1.5, 10, None))
    j.close(remove=False)
    with open(path, "a") as f:
        f.write('{"e": "x", "p": "patch_in", "u": "u2", "g": 0, "lp": -2.')  # killed mid-write
    j = Journal(path, "fp", resume=True)
    assert set(j.records) == {("x", "patch_in", "u1", 0)}
    j.add("x", "patch_in", "u3", 0, Measurement(-3.0, 10, None))
    j.close(remove=False)
    again = Journal(path, "fp", resume=True)
    assert set(again.records) == {("x", "patch_in", "u1", 0), ("x", "patch_in", "u3", 0)}
    assert again.get("x", "patch_in", "u3", 0).lp_sum == -3.0
    again.close(remove=False)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_fingerprint_sees_what_changes_the_tokens_or_the_computation(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for name, text in (("config.json", '{"rope_parameters": {"rope_theta": 10000}}'),
                       ("tokenizer_config.json", '{"chat_template": "a"}'), ("model.safetensors", "w")):
        (model / name).write_text(text)
    probes = tmp_path / "p.jsonl"
    probes.write_text('{"prompt": "a", "response": "b"}\n')
    opts = ScoreOptions(base=str(model), experts={"x": str(model)}, probes={"x": str(probes)}, out="o.json")
    layer = torch.nn.Linear(2, 2)
    first = fingerprint(opts, [model], layer)
    assert fingerprint(opts, [model], layer) == first
    (model / "tokenizer_config.json").write_text('{"chat_template": "b"}')  # other tokens, same weights
    assert fingerprint(opts, [model], layer) != first
    second = fingerprint(opts, [model], layer)
    (model / "config.json").write_text('{"rope_parameters": {"rope_theta": 500000}}')
    assert fingerprint(opts, [model], layer) != second
    third = fingerprint(opts, [model], layer)
    assert fingerprint(opts, [model], layer.to(torch.float64)) != third  # computed in another dtype


def test_a_resumed_run_keeps_the_anchor_layer_its_journal_was_measured_at(scored_pair, tmp_path, monkeypatch):
    import pytest

    from mechmerge.patching import engine
    from mechmerge.patching.score import score

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    opts = dict(base=data["base"], experts={"a": data["experts"]["a"]["model"]},
                probes={"a": data["experts"]["a"]["probes"]}, out=str(tmp_path / "s.json"), progress=False)
    first = data["experts"]["a"]["baseline"]["anchor_layer"]

    def killed(*a, **k):
        raise RuntimeError("killed after the baselines")

    with monkeypatch.context() as m:
        m.setattr(engine, "group_batches", killed)
        with pytest.raises(RuntimeError, match="killed"):
            score(ScoreOptions(**opts))
    # the resumed run's own choice would now be another layer: the journal's is kept
    monkeypatch.setattr(engine, "choose_anchor_layer", lambda b, e, L: (first + 1) % L)
    out = score(ScoreOptions(**opts, resume=True))
    assert out["experts"]["a"]["baseline"]["anchor_layer"] == first


def test_an_overflowing_compute_dtype_is_an_error_not_a_zero_score(tmp_path):
    """Finite weights whose activations overflow float16: the scores would be NaN, which used to
    become 0.0 without a word."""
    import pytest
    from helpers import make_model, noisy_expert, write_probes
    from safetensors.torch import load_file, save_file

    from mechmerge.errors import UserError
    from mechmerge.patching.score import score

    base = make_model("llama", tmp_path / "base", seed=1, layers=2)
    f = base / "model.safetensors"
    sd = load_file(str(f))
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] * 1e8  # float16 ends at 65504
    save_file(sd, str(f), metadata={"format": "pt"})
    expert = noisy_expert(base, tmp_path / "e", seed=2)
    probes = write_probes(tmp_path / "p.jsonl", [("rev ab=", "ba"), ("rev cd=", "dc")])
    with pytest.raises(UserError, match="not finite .*--dtype float32"):
        score(ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes)},
                           out=str(tmp_path / "s.json"), dtype="float16", progress=False))
