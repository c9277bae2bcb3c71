"""The comparison cache's protocol (mechmerge/evaluate/cache.py, `protocol_of`): models are named by
their tensors, so a suite copied elsewhere (new paths, new mtimes) keeps its protocol, while a
changed weight does not; an evaluation dtype other than float32 is part of it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from mechmerge.evaluate.cache import protocol_of
from mechmerge.evaluate.compare import CompareOptions
from mechmerge.evaluate.suite import Suite


def weights(d: Path, seed: int) -> Path:
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g),
               "model.norm.weight": torch.randn(4, generator=g)}, str(d / "model.safetensors"))
    return d


def make_suite(root: Path) -> tuple:
    """(suite, scores path) of a base and two experts under `root`."""
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        weights(root / name, seed)
    for task in ("a", "b"):
        (root / f"{task}.jsonl").write_text(json.dumps({"prompt": f"{task}?", "response": task}) + "\n")
    (root / "run").mkdir()
    (root / "run" / "scores.json").write_text('{"scores": 1}')
    return suite_at(root), root / "run" / "scores.json"


def suite_at(root: Path) -> Suite:
    files = {t: str(root / f"{t}.jsonl") for t in ("a", "b")}
    return Suite(name="pair", base=str(root / "base"), experts={t: str(root / t) for t in ("a", "b")},
                 splits={s: files for s in ("score", "dev", "test")}, max_new_tokens=6)


def opts(**kw):
    return CompareOptions(**{**dict(suite="pair", candidates=2, max_dev_probes=3, max_test_probes=4), **kw})


def test_a_suite_copied_elsewhere_keeps_its_protocol(tmp_path):
    suite, scores = make_suite(tmp_path / "here")
    here = protocol_of(suite, opts(), scores)
    assert (tmp_path / "here" / "run" / "digests.json").is_file()  # the memo, beside the cache
    # another machine: other paths, every file written anew (new mtimes), no memo
    shutil.copytree(tmp_path / "here", tmp_path / "there", copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns("digests.json"))
    f = tmp_path / "there" / "a" / "model.safetensors"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # surely another mtime
    there = protocol_of(suite_at(tmp_path / "there"), opts(), tmp_path / "there" / "run" / "scores.json")
    assert there == here
    # and the same folder, its files touched: the same
    g = tmp_path / "here" / "b" / "model.safetensors"
    st = g.stat()
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert protocol_of(suite, opts(), scores) == here


def test_other_weights_are_another_protocol(tmp_path):
    suite, scores = make_suite(tmp_path / "s")
    before = protocol_of(suite, opts(), scores)
    shutil.rmtree(tmp_path / "s" / "b")
    weights(tmp_path / "s" / "b", seed=7)
    after = protocol_of(suite, opts(), scores)
    assert [k for k in before if before[k] != after[k]] == ["experts"]
    assert after["experts"]["a"] == before["experts"]["a"] and after["experts"]["b"] != before["experts"]["b"]


def test_the_eval_dtype_is_recorded_only_when_not_float32(tmp_path):
    suite, scores = make_suite(tmp_path / "s")
    plain = protocol_of(suite, opts(), scores)
    assert "eval_dtype" not in plain
    assert protocol_of(suite, opts(dtype="float32"), scores) == plain
    bf16 = protocol_of(suite, opts(dtype="bfloat16"), scores)
    assert bf16 == {**plain, "eval_dtype": "bfloat16"}
    assert protocol_of(suite, opts(dtype="float16"), scores)["eval_dtype"] == "float16"
