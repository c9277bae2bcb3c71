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
    # np.array_split: the first n % 4 quartiles take the extra probes (not every other one)
    assert list(np.bincount(quartiles(np.arange(6.0)))) == [2, 2, 1, 1]


def test_an_unknown_metric_lists_every_valid_form():
    """logprob is handled by the evaluator, not registered: the message must still offer it."""
    from mechmerge.errors import UserError
    from mechmerge.evaluate.metrics import METRICS

    with pytest.raises(UserError) as e:
        METRICS.get("logprb")
    assert str(e.value) == ("unknown metric 'logprb' (did you mean 'logprob'?); valid: exact, logprob, prefix, "
                            "or package.module:function")


def test_eval_cli_json(scored_pair, tmp_path):
    d, scores = scored_pair
    out = tmp_path / "ev.json"
    with pytest.raises(SystemExit) as e:
        main(["eval", str(d / "a"), "--probes", f"a={d / 'a.jsonl'}", "--probes", f"b={d / 'b.jsonl'}",
              "--base", str(d / "base"), "--json", str(out), "--max-new-tokens", "6", "--batch-size", "4",
              "--no-progress"])
    assert e.value.code == 0
    data = json.loads(out.read_text())
    assert data["model"] == str(d / "a") and (data["format"], data["version"]) == ("mechmerge.eval", 1)
    for name in ("a", "b"):
        t = data["tasks"][name]
        assert set(t) >= {"accuracy", "logprob", "n", "quartiles"} and t["n"] == 6
        assert list(t["quartiles"]) == ["Q1", "Q2", "Q3", "Q4"]
        assert 0.0 <= t["accuracy"] <= 1.0 and t["logprob"] < 0
    # expert a is more confident on its own task than expert b's task ... relative to its base
    assert data["tasks"]["a"]["logprob"] > json.loads(scores.read_text())["experts"]["a"]["baseline"]["base"]


def test_eval_accuracy_matches_a_hand_written_greedy_loop(scored_pair, tmp_path):
    """Accuracy against greedy decoding written out step by step (one prompt at a time, argmax,
    stop at EOS): no batching, no left padding, no `generate`. The prefix metric, since the
    planted expert never learned to stop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, scores = scored_pair
    out = tmp_path / "ev.json"
    with pytest.raises(SystemExit) as e:
        main(["eval", str(d / "a"), "--probes", f"a={d / 'a.jsonl'}", "--metric", "a=prefix", "--json", str(out),
              "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"])
    assert e.value.code == 0
    t = json.loads(out.read_text())["tasks"]["a"]
    model = AutoModelForCausalLM.from_pretrained(d / "a", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d / "a")
    eos = {tok.eos_token_id, *np.atleast_1d(model.generation_config.eos_token_id or []).tolist()} - {None}
    hits = 0
    probes = [json.loads(line) for line in open(d / "a.jsonl")]
    for p in probes:
        ids = tok(p["prompt"], add_special_tokens=True)["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in eos:
                    break
                new.append(nxt)
        hits += tok.decode(new).strip().startswith(p["response"].strip())
    assert t["n"] == len(probes) and t["accuracy"] == pytest.approx(hits / len(probes), abs=1e-9)
    assert 0 < hits  # the planted expert answers some of its probes
    # the confidence quartiles partition the probes: their accuracies, weighted by size, give the total
    # (sizes depend only on the number of probes: the implementation's own rule, on any confidences)
    sizes = np.bincount(quartiles(np.zeros(len(probes))), minlength=4)
    qs = [t["quartiles"][q] for q in ("Q1", "Q2", "Q3", "Q4")]
    assert sum(a * n for a, n in zip(qs, sizes) if a is not None) == pytest.approx(t["accuracy"] * len(probes))
