"""Weight digests (mechmerge/models/digest.py): the same tensors give the same digest however the
file was written; any change to a value, dtype or shape changes it; the memo re-hashes only
files that changed."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from mechmerge.models import digest


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model.norm.weight": torch.randn(8, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(6, 8, generator=g),
            "lm_head.weight": torch.randn(5, 8, generator=g).to(torch.bfloat16)}


def test_same_tensors_same_digest_however_stored(tmp_path):
    t = tensors()
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_file(t, str(one), metadata={"format": "pt"})
    save_file(dict(reversed(list(t.items()))), str(two), metadata={"format": "pt", "writer": "other 1.2"})
    assert one.read_bytes() != two.read_bytes()  # the files differ, the tensors do not
    assert digest.file_digest(one) == digest.file_digest(two)
    assert len(digest.file_digest(one)) == 64


def test_a_value_a_dtype_or_a_shape_changes_the_digest(tmp_path):
    def d(ts, name):
        path = tmp_path / f"{name}.safetensors"
        save_file(ts, str(path))
        return digest.file_digest(path)

    t = tensors()
    ref = d(t, "ref")
    nudged = {k: v.clone() for k, v in t.items()}
    nudged["model.layers.0.mlp.up_proj.weight"][5, 7] += 1e-6  # the last element, by one ulp or so
    assert d(nudged, "nudged") != ref
    # the same bytes under another dtype or shape
    up = t["model.layers.0.mlp.up_proj.weight"]
    assert d({**t, "model.layers.0.mlp.up_proj.weight": up.view(torch.int32)}, "int") != ref
    assert d({**t, "model.layers.0.mlp.up_proj.weight": up.reshape(8, 6)}, "shape") != ref
    # and the same tensor under another name
    renamed = dict(t)
    renamed["lm_head.weight_"] = renamed.pop("lm_head.weight")
    assert d(renamed, "renamed") != ref


def test_weights_digest_covers_every_file_and_its_name(tmp_path):
    t = tensors()
    half = dict(list(t.items())[:1]), dict(list(t.items())[1:])
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, meta in ((a, None), (b, {"format": "pt"})):
        d.mkdir()
        save_file(half[0], str(d / "model-00001-of-00002.safetensors"), metadata=meta)
        save_file(half[1], str(d / "model-00002-of-00002.safetensors"), metadata=meta)
    assert digest.weights_digest(a) == digest.weights_digest(b)
    c.mkdir()
    save_file(t, str(c / "model.safetensors"))  # the same tensors in one file: another layout
    assert digest.weights_digest(c) != digest.weights_digest(a)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no .safetensors files"):
        digest.weights_digest(tmp_path / "empty")


def test_cached_digests_hash_a_file_once_until_it_changes(tmp_path, monkeypatch):
    model, memo = tmp_path / "model", tmp_path / "run" / "digests.json"
    model.mkdir()
    f = model / "model.safetensors"
    save_file(tensors(0), str(f))
    save_file({"x": torch.ones(3)}, str(model / "extra.safetensors"))
    hashed = []
    real = digest.file_digest
    monkeypatch.setattr(digest, "file_digest", lambda p: hashed.append(p.name) or real(p))

    first = digest.cached_digests(model, memo)
    assert first == [["extra.safetensors", real(model / "extra.safetensors")], ["model.safetensors", real(f)]]
    assert sorted(hashed) == ["extra.safetensors", "model.safetensors"]
    assert str(f.resolve()) in json.loads(memo.read_text())
    written = memo.stat().st_mtime_ns

    assert digest.cached_digests(model, memo) == first
    assert len(hashed) == 2 and memo.stat().st_mtime_ns == written  # nothing hashed, nothing rewritten

    before = f.stat()
    save_file(tensors(1), str(f))  # other values, the same size
    assert f.stat().st_size == before.st_size
    if f.stat().st_mtime_ns == before.st_mtime_ns:  # a coarse clock: make the rewrite visible
        os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    third = digest.cached_digests(model, memo)
    assert hashed[2:] == ["model.safetensors"]
    assert third[0] == first[0] and third[1][1] == real(f) != first[1][1]
    # a memo that cannot be read is rebuilt, not an error
    memo.write_text("{broken")
    assert digest.cached_digests(model, memo) == third and len(hashed) == 5
