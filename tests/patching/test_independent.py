"""The scores against a computation that shares no code with the scorer: plain transformers
forwards of the base, the expert and of models with one module's tensors copied across, the
log-probabilities of the response tokens taken by hand."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def mean_logprob(model, tok, pairs):
    """Mean log-probability per response token: prompt with the tokenizer's special tokens,
    response without, position t-1 predicting token t."""
    total, n = 0.0, 0
    with torch.no_grad():
        for prompt, response in pairs:
            p = tok(prompt, add_special_tokens=True)["input_ids"]
            r = tok(response, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            total += sum(float(logp[len(p) + i - 1, t]) for i, t in enumerate(r))
            n += len(r)
    return total / n


def with_unit(into, source, unit):
    """A copy of `into` whose tensors under `unit` are `source`'s."""
    model = AutoModelForCausalLM.from_pretrained(into, dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(unit + "."):
                p.copy_(theirs[name])
    return model.eval()


@pytest.mark.parametrize("unit", ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.v_proj",
                                  "model.layers.2.mlp.up_proj"])
def test_scores_match_plain_forwards(scored_pair, unit):
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    e = data["experts"]["a"]
    pairs = [(json.loads(line)["prompt"], json.loads(line)["response"]) for line in open(e["probes"])]
    tok = AutoTokenizer.from_pretrained(data["base"])
    m_b = mean_logprob(with_unit(data["base"], data["base"], "none"), tok, pairs)
    m_e = mean_logprob(with_unit(e["model"], e["model"], "none"), tok, pairs)
    assert e["baseline"]["base"] == pytest.approx(m_b, abs=1e-5)
    assert e["baseline"]["expert"] == pytest.approx(m_e, abs=1e-5)
    patched = mean_logprob(with_unit(data["base"], e["model"], unit), tok, pairs)
    reverted = mean_logprob(with_unit(e["model"], data["base"], unit), tok, pairs)
    s = e["modules"][unit]
    assert s["patch_in"] == pytest.approx((patched - m_b) / (m_e - m_b), abs=1e-5)
    assert s["knockout"] == pytest.approx((m_e - reverted) / (m_e - m_b), abs=1e-5)
    # a's planted units move its behaviour; a unit it never trained is identical and scores 0
    if unit == "model.layers.2.mlp.up_proj":
        assert s["identical"] and s["patch_in"] == 0.0
    else:
        assert abs(s["patch_in"]) > 1e-3


def test_probe_grouping_does_not_change_the_scores(scored_pair, tmp_path):
    """--cache-mb 0 replays every batch group from scratch instead of from cached block inputs, and
    smaller batches make more groups: the same numbers up to float summation order."""
    from mechmerge.patching.score import ScoreOptions, score

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    out = tmp_path / "grouped.json"
    score(ScoreOptions(base=data["base"], experts={n: e["model"] for n, e in data["experts"].items()},
                       probes={n: e["probes"] for n, e in data["experts"].items()}, out=str(out), cache_mb=0,
                       batch_size=2, progress=False))
    other = json.loads(out.read_text())
    for n, e in data["experts"].items():
        for u, s in e["modules"].items():
            for k in ("patch_in", "knockout", "anchor"):
                assert other["experts"][n]["modules"][u][k] == pytest.approx(s[k], abs=1e-7), (n, u, k)


def test_one_direction_and_whole_layers(scored_pair, tmp_path):
    """--direction patch_in measures only that; --granularity layer scores whole blocks, and a block
    holding a planted module scores what patching all its tensors gives (checked by hand above)."""
    from mechmerge.patching.score import ScoreOptions, score

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    e = data["experts"]["a"]
    kw = dict(base=data["base"], experts={"a": e["model"]}, probes={"a": e["probes"]}, progress=False)
    one = score(ScoreOptions(**kw, out=str(tmp_path / "p.json"), direction="patch_in"))
    mods = one["experts"]["a"]["modules"]
    assert all(s["knockout"] is None for s in mods.values())
    assert mods["model.layers.1.mlp.down_proj"]["patch_in"] == pytest.approx(
        e["modules"]["model.layers.1.mlp.down_proj"]["patch_in"], abs=1e-9)
    layers = score(ScoreOptions(**kw, out=str(tmp_path / "l.json"), granularity="layer"))
    units = layers["experts"]["a"]["modules"]
    assert {"model.layers.0", "model.layers.1", "model.layers.2"} <= set(units)
    pairs = [(json.loads(line)["prompt"], json.loads(line)["response"]) for line in open(e["probes"])]
    tok = AutoTokenizer.from_pretrained(data["base"])
    m_b, m_e = e["baseline"]["base"], e["baseline"]["expert"]
    patched = mean_logprob(with_unit(data["base"], e["model"], "model.layers.1"), tok, pairs)
    assert units["model.layers.1"]["patch_in"] == pytest.approx((patched - m_b) / (m_e - m_b), abs=1e-5)
    assert units["model.layers.2"]["identical"]  # a never trained block 2
