"""The comparison harness's cache: a re-run resumes from it, a changed protocol refuses it."""

import json
import os
import shutil
from pathlib import Path

import pytest
from mechmerge.errors import UserError
from mechmerge.evaluate import compare as cmp


@pytest.fixture
def pair_suite(scored_pair, tmp_path):
    d, scores = scored_pair
    files = {"a": str(d / "a.jsonl"), "b": str(d / "b.jsonl")}
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"name": "pair", "base": str(d / "base"),
                                 "experts": {"a": str(d / "a"), "b": str(d / "b")},
                                 "splits": {s: files for s in ("score", "dev", "test")}, "max_new_tokens": 6}))
    out = tmp_path / "run"
    out.mkdir()
    shutil.copyfile(scores, out / "scores.json")  # the harness would otherwise score the pair itself
    return suite, out


def opts(suite, out, **kw):
    base = dict(suite=str(suite), out=str(out), sizes="2", candidates=1, strategies_=("mix",),
                max_dev_probes=3, max_test_probes=4, device="cpu", progress=False)
    return cmp.CompareOptions(**{**base, **kw})


def test_rerun_reads_the_cache_and_a_changed_protocol_is_refused(pair_suite, monkeypatch, capsys):
    suite, out = pair_suite
    first = cmp.compare(opts(suite, out))
    cache = json.loads((out / "cache.json").read_text())
    assert cache[cmp.PROTOCOL]["max_test_probes"] == 4
    assert any(k.startswith("test|a+b|guided:mix|") for k in cache)

    def no_eval(*a, **k):
        raise AssertionError("a cached candidate was evaluated again")

    monkeypatch.setattr(cmp.Harness, "_eval", no_eval)
    again = cmp.compare(opts(suite, out))
    assert again["summary"] == first["summary"]
    # the test split's size decides every test number: a cache made with 4 probes is not reused with 3
    with pytest.raises(UserError, match="max_test_probes"):
        cmp.compare(opts(suite, out, max_test_probes=3))
    # so does every expert's weights (the check sees the file change, not only the path)
    f = sorted(Path(json.loads(suite.read_text())["experts"]["a"]).glob("*.safetensors"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(UserError, match="experts"):
            cmp.compare(opts(suite, out))
    finally:  # the expert is shared with other tests
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cache_without_protocol_is_adopted_and_stamped(pair_suite, capsys):
    suite, out = pair_suite
    first = cmp.compare(opts(suite, out))
    cache_file = out / "cache.json"
    cache = json.loads(cache_file.read_text())
    del cache[cmp.PROTOCOL]  # as written before the cache kept its protocol
    cache_file.write_text(json.dumps(cache))
    again = cmp.compare(opts(suite, out))
    assert "records no protocol" in capsys.readouterr().err
    assert again["summary"] == first["summary"]
    assert cmp.PROTOCOL in json.loads(cache_file.read_text())
