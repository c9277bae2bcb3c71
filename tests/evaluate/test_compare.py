"""The comparison harness's cache: a re-run resumes from it, a changed protocol refuses it,
and shard processes (--workers) fill one cache between them."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechmerge.errors import UserError
from mechmerge.evaluate import compare as cmp
from mechmerge.evaluate.cache import PROTOCOL


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
    assert cache[PROTOCOL]["max_test_probes"] == 4
    assert any(k.startswith("test|a+b|guided:mix|") for k in cache)
    # each test entry keeps every instruction's answer, which the claim's paired test reads
    entry = next(v for k, v in cache.items() if k.startswith("test|a+b|guided:mix|"))
    assert all(len(entry[t]["correct"]) == 4 and set(entry[t]["correct"]) <= {0, 1} for t in ("a", "b"))
    assert all(abs(sum(entry[t]["correct"]) / 4 - entry[t]["accuracy"]) < 1e-12 for t in ("a", "b"))
    p = first["summary"]["claim"]["paired"]
    assert p is not None and p["n"] == 8 and -1 <= p["diff"] <= 1

    def no_eval(*a, **k):
        raise AssertionError("a cached candidate was evaluated again")

    monkeypatch.setattr(cmp.Harness, "_eval", no_eval)
    again = cmp.compare(opts(suite, out))
    assert again["summary"] == first["summary"]
    # the test split's size decides every test number: a cache made with 4 probes is not reused with 3
    with pytest.raises(UserError, match="max_test_probes"):
        cmp.compare(opts(suite, out, max_test_probes=3))
    # so does every expert's weights: by their tensors, so a file only touched (copied, rebuilt
    # bit for bit on another machine) keeps the cache, and one changed value refuses it
    f = sorted(Path(json.loads(suite.read_text())["experts"]["a"]).glob("*.safetensors"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cmp.compare(opts(suite, out))["summary"] == first["summary"]  # _eval still refuses to run
    original = f.read_bytes()
    tensors = load_file(str(f))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1
    save_file(tensors, str(f), metadata={"format": "pt"})
    try:
        with pytest.raises(UserError, match="experts"):
            cmp.compare(opts(suite, out))
    finally:  # the expert is shared with other tests
        f.write_bytes(original)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cache_without_protocol_is_adopted_and_stamped(pair_suite, capsys):
    suite, out = pair_suite
    first = cmp.compare(opts(suite, out))
    cache_file = out / "cache.json"
    cache = json.loads(cache_file.read_text())
    del cache[PROTOCOL]  # as written before the cache kept its protocol
    cache_file.write_text(json.dumps(cache))
    again = cmp.compare(opts(suite, out))
    assert "records no protocol" in capsys.readouterr().err
    assert again["summary"] == first["summary"]
    assert PROTOCOL in json.loads(cache_file.read_text())


def test_a_changed_search_space_is_refused_and_an_older_cache_continues(pair_suite, monkeypatch, capsys):
    """The candidates each method may propose live in code (grids, default strategy, objective):
    changing them must not resume on candidates chosen from the old ones. A cache written before
    the search space was recorded continues, with a note, and records it with its next result."""
    suite, out = pair_suite
    first = cmp.compare(opts(suite, out))
    cache_file = out / "cache.json"
    assert json.loads(cache_file.read_text())[PROTOCOL]["search"]["task_arithmetic"] == cmp.TA_GRID[:1]
    monkeypatch.setattr(cmp, "TA_GRID", [0.8] + cmp.TA_GRID)
    with pytest.raises(UserError, match="differs in: search"):
        cmp.compare(opts(suite, out))
    monkeypatch.undo()

    cache = json.loads(cache_file.read_text())
    del cache[PROTOCOL]["search"]  # as written before the search space was recorded
    del cache[next(k for k in cache if k.startswith("test|a+b|linear"))]  # one result left to compute
    cache_file.write_text(json.dumps(cache))
    again = cmp.compare(opts(suite, out))
    assert "before mechmerge recorded search" in capsys.readouterr().err
    assert again["summary"] == first["summary"]
    assert "search" in json.loads(cache_file.read_text())[PROTOCOL]
    # an older cache that differs in anything else is still refused
    cache = json.loads(cache_file.read_text())
    del cache[PROTOCOL]["search"]
    cache[PROTOCOL]["seed"] = 1
    cache_file.write_text(json.dumps(cache))
    with pytest.raises(UserError, match="differs in: search, seed"):
        cmp.compare(opts(suite, out))


def test_partial_in_a_folder_without_scores_computes_nothing(pair_suite, tmp_path):
    suite, _ = pair_suite
    empty = tmp_path / "empty"
    with pytest.raises(UserError, match="has not started"):
        cmp.compare(opts(suite, empty, partial=True))
    assert not (empty / "scores.json").exists()


@pytest.fixture
def trio_suite(scored_pair, tmp_path):
    """Three experts (c is a copy of a under another name, with its scores), so three pairs."""
    d, scores = scored_pair
    c = tmp_path / "c"
    shutil.copytree(d / "a", c)  # mergekit refuses one model twice in a merge
    files = {"a": str(d / "a.jsonl"), "b": str(d / "b.jsonl"), "c": str(d / "a.jsonl")}
    suite = tmp_path / "suite3.json"
    suite.write_text(json.dumps({"name": "trio", "base": str(d / "base"),
                                 "experts": {"a": str(d / "a"), "b": str(d / "b"), "c": str(c)},
                                 "splits": {s: files for s in ("score", "dev", "test")}, "max_new_tokens": 6}))
    data = json.loads(scores.read_text())
    data["experts"]["c"] = {**data["experts"]["a"], "model": str(c)}
    return suite, json.dumps(data)


def test_workers_fill_one_cache_and_match_a_single_process(trio_suite, tmp_path, monkeypatch):
    suite, scores = trio_suite
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get 1 thread each: the same kernels, the same numbers
    try:
        for name in ("single", "workers"):
            out = tmp_path / name
            out.mkdir()
            (out / "scores.json").write_text(scores)
            if name == "workers":
                # the parent only assembles: every evaluation must come from the workers' shared cache,
                # so it does not even load a model
                monkeypatch.setattr(cmp.Harness, "_eval", lambda *a, **k: pytest.fail("parent evaluated"))
                monkeypatch.setattr(cmp, "load_model", lambda *a, **k: pytest.fail("parent loaded a model"))
            runs[name] = cmp.compare(opts(suite, out, workers=2 if name == "workers" else 1))
    finally:
        torch.set_num_threads(threads)
    assert runs["workers"]["summary"] == runs["single"]["summary"]
    assert len(runs["single"]["combinations"]) == 3
    keys = {n: set(json.loads((tmp_path / n / "cache.json").read_text())) for n in runs}
    assert keys["workers"] == keys["single"]


def test_shard_spec_is_checked(pair_suite):
    suite, out = pair_suite
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(UserError, match="--shard"):
            cmp.compare(opts(suite, out, shard=bad))
    with pytest.raises(UserError, match="--workers"):
        cmp.compare(opts(suite, out, shard="1/2", workers=2))


def test_partial_reports_the_complete_combinations_without_computing(pair_suite, trio_suite, tmp_path, monkeypatch):
    suite, out = pair_suite
    full = cmp.compare(opts(suite, out))

    def no_compute(*a, **k):
        raise AssertionError("--partial computed something")

    trio, scores = trio_suite
    run = tmp_path / "trio"
    run.mkdir()
    (run / "scores.json").write_text(scores)
    with pytest.raises(UserError, match="no combination is complete"):
        cmp.compare(opts(trio, run, partial=True))
    cmp.compare(opts(trio, run, shard="1/3"))  # a+b only, as one worker of a running comparison leaves it

    monkeypatch.setattr(cmp, "load_model", no_compute)
    monkeypatch.setattr(cmp.Harness, "_eval", no_compute)
    monkeypatch.setattr(cmp, "make_recipe", no_compute)
    same = cmp.compare(opts(suite, out, partial=True))
    assert same["summary"] == full["summary"] and same["partial"]["missing"] == []
    part = cmp.compare(opts(trio, run, partial=True))
    assert part["partial"] == {"complete": ["a+b"], "missing": ["a+c", "b+c"]}
    assert list(part["combinations"]) == ["a+b"]
    md = (run / "results-partial.md").read_text()
    assert md.startswith("**Partial: 1 of 3 combinations complete** (missing: a+c, b+c)")
    assert (run / "results-partial.png").is_file() and not (run / "results.md").exists()
    with pytest.raises(UserError, match="--partial computes nothing"):
        cmp.compare(opts(trio, run, partial=True, workers=2))


def test_a_failing_worker_stops_the_others_at_once(trio_suite, tmp_path, monkeypatch):
    """Shard 1 (a+b, b+c) fails on its first verdict on b; shard 2 (a+c) would take minutes (c's
    metric sleeps), so the run ends quickly only if the parent stops shard 2 when shard 1 fails."""
    import time

    suite, scores = trio_suite
    (tmp_path / "slowmetrics.py").write_text(
        "import time\n"
        "def broken(pred, probe):\n    raise RuntimeError('metric b is broken')\n"
        "def slow(pred, probe):\n    time.sleep(120)\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    d = json.loads(suite.read_text())
    d["metrics"] = {"b": "slowmetrics:broken", "c": "slowmetrics:slow"}
    suite.write_text(json.dumps(d))
    out = tmp_path / "run"
    out.mkdir()
    (out / "scores.json").write_text(scores)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"workers \[1\] of 2 failed .*stopped \[2\]"):
        cmp.compare(opts(suite, out, workers=2))
    assert time.monotonic() - t0 < 100  # shard 2 alone would sleep 120 s per verdict on c


def test_results_are_the_same_file_from_the_cache(pair_suite, tmp_path):
    """Experts listed b before a, so the run's own entries are not in sorted order; the cache
    file gives them back sorted: results.json must not depend on which of the two it read."""
    suite, out = pair_suite
    d = json.loads(suite.read_text())
    d["experts"] = dict(reversed(list(d["experts"].items())))
    suite.write_text(json.dumps(d))
    cmp.compare(opts(suite, out))
    written = (out / "results.json").read_bytes()
    (out / "results.json").unlink()
    cmp.compare(opts(suite, out))  # everything from the cache now
    assert (out / "results.json").read_bytes() == written
