"""The alpha zoo shipped in the package: complete, consistent with its manifest, as good as it says."""

import json

import pytest

from mechmerge.probes import load_probes, tokenize_all
from mechmerge.zoo import SHIPPED, base, checkpoints, experts, locate, manifest, probe_files
from mechmerge.zoo.build import SPLITS, load_model, measure, read_jsonl
from mechmerge.zoo.tokenizer import build_char_tokenizer

ZOO = SHIPPED / "alpha"


@pytest.fixture(scope="module")
def m():
    if not (ZOO / "zoo.json").is_file():
        pytest.fail(f"the shipped zoo {ZOO} is missing; build it with `mechmerge zoo --out /tmp/alpha` and copy that folder to {ZOO} (the command refuses to write into the package's zoo folder)")
    return manifest(ZOO)


def test_locate_prefers_the_shipped_copy(m, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHMERGE_CACHE", str(tmp_path))
    assert locate("alpha") == ZOO
    assert experts("alpha") == experts(ZOO)


def test_manifest_matches_the_files(m):
    listed = {"zoo.json"}
    for d in [base(ZOO), *experts(ZOO).values(), *(p for c in checkpoints(ZOO).values() for p in c.values())]:
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
            assert (d / f).is_file(), d / f
        listed.update(str(f.relative_to(ZOO)) for f in d.iterdir())
    for split in SPLITS:
        listed.update(str(f.relative_to(ZOO)) for f in probe_files(ZOO, split).values())
    on_disk = {str(f.relative_to(ZOO)) for f in ZOO.rglob("*") if f.is_file()}
    assert on_disk == listed  # nothing missing, nothing stray
    assert set(experts(ZOO)) == set(m["specialists"]) and len(m["specialists"]) == 4
    assert len(next(iter(checkpoints(ZOO).values()))) >= 3
    sizes = dict(zip(SPLITS, m["spec"]["probes"]))
    assert sizes == {"score": 32, "dev": 64, "test": 128}
    for split, n in sizes.items():
        for f in probe_files(ZOO, split).values():
            assert len(read_jsonl(f)) == n
    assert sum(f.stat().st_size for f in ZOO.rglob("*") if f.is_file()) < 6.5e6


def test_splits_disjoint_and_tokenize(m):
    tok = build_char_tokenizer()
    for skill in m["skills"]:
        seen = [p for split in SPLITS for p, _ in read_jsonl(ZOO / m["skills"][skill]["probes"][split])]
        assert len(seen) == len(set(seen)), skill
        probes = load_probes(ZOO / m["skills"][skill]["probes"]["score"])
        tokenize_all(probes, tok, m["model_config"]["max_position_embeddings"])
        for p in probes:
            assert tok.decode(tok(p.prompt + p.response, add_special_tokens=False)["input_ids"]) == p.prompt + p.response


def test_saved_tokenizer_round_trips(m):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base(ZOO))
    ref = build_char_tokenizer()
    text = "sort:zyx= ~!AZ09"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)


def test_quality_targets_recorded(m):
    acc = m["accuracy"]
    for s in m["specialists"]:
        assert acc["experts"][s][s] >= 0.9, s
        assert acc["base"][s] <= 0.2, s
        for g in m["general"]:
            assert acc["experts"][s][g] >= 0.85, (s, g)
    for g in m["general"]:
        assert acc["base"][g] >= 0.9, g


def test_accuracy_reproduces(m):
    """Re-measure one expert on its own skill and on a general skill: same numbers as the manifest."""
    tok = build_char_tokenizer()
    s, g = m["specialists"][0], m["general"][0]
    model = load_model(experts(ZOO)[s])
    for skill in (s, g):
        pairs = read_jsonl(probe_files(ZOO, "test")[skill])
        got = measure(model, tok, pairs, m["max_new_tokens"])
        assert got == pytest.approx(m["accuracy"]["experts"][s][skill], abs=1 / 128)  # one probe of float noise
    cfg = json.loads((experts(ZOO)[s] / "config.json").read_text())
    assert all(cfg[k] == v for k, v in m["model_config"].items() if k != "architecture")
