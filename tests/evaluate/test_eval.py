"""mechmerge eval: JSON shape, quartiles, agreement with one-at-a-time generation."""

import json

import numpy as np
import pytest
from mechmerge.cli import main
from mechmerge.evaluate.run import quartiles


def test_quartiles_split_by_confidence():
    conf = np.array([0.5, -3.0, -1.0, -2.0, 0.1, -0.5, -4.0, 0.0])
    q = quartiles(conf)
    assert sorted(np.bincount(q)) == [2, 2, 2, 2]
    assert set(q[np.argsort(conf)[:2]]) == {0} and set(q[np.argsort(conf)[-2:]]) == {3}
    assert list(quartiles(np.zeros(5))) == [0, 0, 1, 2, 3]  # ties: stable


def test_eval_cli_json(scored_pair, tmp_path):
    d, scores = scored_pair
    out = tmp_path / "ev.json"
    with pytest.raises(SystemExit) as e:
        main(["eval", str(d / "a"), "--probes", f"a={d / 'a.jsonl'}", "--probes", f"b={d / 'b.jsonl'}",
              "--base", str(d / "base"), "--json", str(out), "--max-new-tokens", "6", "--batch-size", "4",
              "--no-progress"])
    assert e.value.code == 0
    data = json.loads(out.read_text())
    assert data["model"] == str(d / "a")
    for name in ("a", "b"):
        t = data["tasks"][name]
        assert set(t) >= {"accuracy", "logprob", "n", "quartiles"} and t["n"] == 6
        assert list(t["quartiles"]) == ["Q1", "Q2", "Q3", "Q4"]
        assert 0.0 <= t["accuracy"] <= 1.0 and t["logprob"] < 0
    # expert a is more confident on its own task than expert b's task ... relative to its base
    assert data["tasks"]["a"]["logprob"] > json.loads(scores.read_text())["experts"]["a"]["baseline"]["base"]
