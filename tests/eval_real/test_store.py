"""The committed store (eval/real/store.py) and the runner's restore from it: a stage whose cache
is gone is rebuilt from the store, keeping its built_id, when it was made from the same inputs
and --set values; otherwise it runs."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import runner  # noqa: E402
from eval.real import store as stored  # noqa: E402
from eval.real.models import ModelSpec  # noqa: E402
from mechmerge.errors import UserError  # noqa: E402
from mechmerge.registry import Registry  # noqa: E402


def artifact(root: Path, files: dict, manifest: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / stored.MANIFEST).write_text(json.dumps(manifest))
    return root


def tree(root: Path) -> dict:
    return {str(f.relative_to(root)): f.read_text() for f in sorted(root.rglob("*")) if f.is_file()}


def test_save_keeps_the_matching_files_and_replaces_the_earlier_copy(tmp_path):
    store = tmp_path / "store"
    a = artifact(tmp_path / "a1", {"x.txt": "1", "sub/y.txt": "2", "big.bin": "weights"}, {"built_id": "s-1"})
    (store / "s.work").mkdir(parents=True)
    (store / "s.work" / "cache.json").write_text("{}")  # the stage's mirrored scratch, beside its build
    assert stored.save(store, "s", a, ["*.txt"]) == ["sub/y.txt", "x.txt"]  # `*` crosses `/`
    assert tree(store / "s") == {"stage.json": '{"built_id": "s-1"}', "sub/y.txt": "2", "x.txt": "1"}
    assert stored.manifest(store, "s") == {"built_id": "s-1"}
    # a later build that no longer writes x.txt: the store holds exactly the new build
    b = artifact(tmp_path / "a2", {"sub/y.txt": "3", "z.txt": "4"}, {"built_id": "s-2"})
    assert stored.save(store, "s", b, ["*.txt", stored.MANIFEST]) == ["sub/y.txt", "z.txt"]
    assert tree(store / "s") == {"stage.json": '{"built_id": "s-2"}', "sub/y.txt": "3", "z.txt": "4"}
    assert (store / "s.work" / "cache.json").read_text() == "{}"
    assert sorted(p.name for p in store.iterdir()) == ["s", "s.work"]  # no temporary left
    # (): the manifest only
    assert stored.save(store, "s", b, ()) == [] and tree(store / "s") == {"stage.json": '{"built_id": "s-2"}'}


def test_manifest_is_none_when_missing_or_unreadable(tmp_path):
    assert stored.manifest(tmp_path, "nothing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / stored.MANIFEST).write_text("{not json")
    assert stored.manifest(tmp_path, "bad") is None


def test_copy_back_restores_the_files_but_not_the_manifest(tmp_path):
    store = tmp_path / "store"
    a = artifact(tmp_path / "a", {"x.txt": "1", "sub/deep/y.txt": "2"}, {"built_id": "s-1"})
    stored.save(store, "s", a, ["*.txt"])
    into = tmp_path / "restored"
    into.mkdir()
    stored.copy_back(store, "s", into)
    assert tree(into) == {"sub/deep/y.txt": "2", "x.txt": "1"}


def test_seed_work_continues_only_scratch_made_from_the_same_inputs(tmp_path):
    store = tmp_path / "store"
    mirror = stored.work_dir(store, "compare")
    assert mirror == store / "compare.work"
    into = tmp_path / "work" / "compare" / "cache.json"
    stamp = tmp_path / "work" / "compare" / "stamp.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(json.dumps({"inputs": {"score": "score-1"}, "set": {}}))
    # nothing stored: nothing seeded, this run's stamp recorded for the mirror to come
    assert stored.seed_work(store, "compare", "cache.json", into, stamp) == "none" and not into.exists()
    assert json.loads((mirror / "stamp.json").read_text())["inputs"] == {"score": "score-1"}
    (mirror / "cache.json").write_text("stored")
    assert stored.seed_work(store, "compare", "cache.json", into, stamp) == "seeded" and into.read_text() == "stored"
    # a local cache is this run's (the runner cleared it otherwise): it replaces the mirror at once
    into.write_text("newer, here")
    assert stored.seed_work(store, "compare", "cache.json", into, stamp) == "kept"
    assert (mirror / "cache.json").read_text() == "newer, here"
    # scores rebuilt: the stored cache belongs to other inputs and is neither used nor kept
    into.unlink()
    stamp.write_text(json.dumps({"inputs": {"score": "score-2"}, "set": {}}))
    assert stored.seed_work(store, "compare", "cache.json", into, stamp) == "other inputs"
    assert not into.exists() and not (mirror / "cache.json").exists()
    assert json.loads((mirror / "stamp.json").read_text())["inputs"] == {"score": "score-2"}


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_mirror_copies_when_the_source_changed_and_on_exit(tmp_path):
    src, dest = tmp_path / "work" / "cache.json", tmp_path / "store" / "compare.work" / "cache.json"
    src.parent.mkdir()
    # a mirror that never ticks still copies on exit
    src.write_text("v0")
    with stored.Mirror(src, dest, every=3600):
        pass
    assert dest.read_text() == "v0"
    dest.unlink()

    src.write_text("v1")
    with stored.Mirror(src, dest, every=0.05):
        assert wait_for(lambda: dest.exists() and dest.read_text() == "v1")
        inode = dest.stat().st_ino  # each copy replaces dest (a new inode)
        time.sleep(0.3)  # six ticks, the source unchanged: no copy
        assert dest.stat().st_ino == inode
        src.write_text("v2, longer")
        assert wait_for(lambda: dest.read_text() == "v2, longer")
        inode = dest.stat().st_ino
        src.write_text("v3 at exit")
    assert dest.read_text() == "v3 at exit" and dest.stat().st_ino != inode
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cache.json"]  # no .tmp left behind


def test_mirror_without_a_source_copies_nothing(tmp_path):
    dest = tmp_path / "store" / "x.json"
    with stored.Mirror(tmp_path / "missing.json", dest, every=0.01):
        time.sleep(0.05)
    assert not dest.exists()


def test_check_digest():
    stored.check_digest("import", "ab" * 32, "ab" * 32)
    stored.check_digest("import", None, "ab" * 32)  # nothing recorded: nothing to check
    with pytest.raises(stored.RestoreMismatch, match="finetune/json: rebuilt weights digest cdcd.*abab.*--redo"):
        stored.check_digest("finetune/json", "ab" * 32, "cd" * 32)
    assert issubclass(stored.RestoreMismatch, UserError)


# The runner: the same registry pattern as test_stage_runner.py (an empty registry per test).

@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Stages a (stored *.txt, with a restore hook) and b (after a, stored *.txt), a context with
    a store under tmp_path; returns (ctx, calls, hooks, logs, hook_error)."""
    monkeypatch.setattr(runner, "STAGES", Registry("stage"))
    calls, hooks, logs = [], [], []
    hook_error = {"a": None}
    spec = ModelSpec("toy", lambda work: work / "x.gguf", "none", gen_batch_size=2)
    ctx = runner.Context(spec, tmp_path / "cache" / "toy", log=logs.append, store=tmp_path / "store")

    def rebuild(ctx, out):
        hooks.append(sorted(p.name for p in out.iterdir()))  # what the store gave back, before the hook
        if hook_error["a"] is not None:
            raise hook_error["a"]
        (out / "weights.bin").write_text("rebuilt from " + (out / "a.txt").read_text())

    @runner.stage("a", artifact="A", store=("*.txt",), restore=rebuild, volatile=("workers",))
    def a(ctx, out):
        """Stage a."""
        calls.append("a")
        (out / "a.txt").write_text(str(ctx.param("a.n", 1)))
        (out / "weights.bin").write_text("too large to store")
        return {}

    @runner.stage("b", artifact="B", requires=("a",), store=("*.txt",))
    def b(ctx, out):
        """Stage b."""
        calls.append("b")
        (out / "b.txt").write_text((ctx.artifact("a") / "a.txt").read_text() * 2)
        return {}

    return ctx, calls, hooks, logs, hook_error


def built(ctx, name):
    return runner.manifest_of(ctx.artifact(name))["built_id"]


def test_a_lost_cache_is_restored_from_the_store(fresh):
    ctx, calls, hooks, logs, _ = fresh
    first = runner.run(ctx, ["b"])
    assert calls == ["a", "b"]
    assert tree(ctx.store / "a") == {"a.txt": "1", "stage.json": (ctx.artifact("a") / "stage.json").read_text()}
    shutil.rmtree(ctx.root)  # the machine is gone; the store was committed

    again = runner.run(ctx, ["b"])
    assert calls == ["a", "b"]  # neither ran
    assert hooks == [["a.txt"]]  # the hook saw the stored files, not the manifest
    for name in ("a", "b"):
        assert built(ctx, name) == first[name]["built_id"] == again[name]["built_id"]
        assert "restored" in runner.manifest_of(ctx.artifact(name))
        assert runner.state(ctx, name) == "complete"
    assert (ctx.artifact("a") / "weights.bin").read_text() == "rebuilt from 1"
    assert (ctx.artifact("b") / "b.txt").read_text() == "11"
    assert any(line.startswith("[b] restoring ") for line in logs)
    # complete now: a third run neither runs nor restores
    n = len(hooks)
    runner.run(ctx, ["b"])
    assert calls == ["a", "b"] and len(hooks) == n


def test_other_set_values_are_not_restored_but_volatile_ones_are(fresh):
    ctx, calls, hooks, logs, _ = fresh
    runner.run(ctx, ["a"])
    shutil.rmtree(ctx.root)
    ctx.params = {"a.n": "1.0", "a.workers": "8"}  # the recorded value, and a speed-only one
    runner.run(ctx, ["a"])
    assert calls == ["a"] and len(hooks) == 1
    shutil.rmtree(ctx.root)
    ctx.params = {"a.n": "5"}
    runner.run(ctx, ["a"])
    assert calls == ["a", "a"] and len(hooks) == 1
    assert any("[a] the store's build used a.n=1: not restored" in line for line in logs)
    assert (ctx.artifact("a") / "a.txt").read_text() == "5"
    assert tree(ctx.store / "a")["a.txt"] == "5"  # the new build replaced the stored one


def test_redo_runs_and_replaces_the_store_and_stale_downstream_is_not_restored(fresh):
    ctx, calls, hooks, logs, _ = fresh
    first = runner.run(ctx, ["b"])
    runner.run(ctx, ["a"], redo=["a"])  # a rebuilt though the store could restore it
    assert calls == ["a", "b", "a"] and not hooks
    new_a = built(ctx, "a")
    assert new_a != first["a"]["built_id"] and stored.manifest(ctx.store, "a")["built_id"] == new_a
    # b's stored build was made from the old a: not restored, run
    shutil.rmtree(ctx.root)
    runner.run(ctx, ["b"])
    assert built(ctx, "a") == new_a and calls == ["a", "b", "a", "b"]
    assert any("[b] the store's build" in line and "other inputs: not restored" in line for line in logs)
    assert stored.manifest(ctx.store, "b")["inputs"] == {"a": new_a}


def test_a_stage_the_hook_cannot_rebuild_is_run(fresh):
    ctx, calls, hooks, logs, hook_error = fresh
    runner.run(ctx, ["a"])
    shutil.rmtree(ctx.root)
    hook_error["a"] = stored.NotRestorable("no GGUF on this machine")
    runner.run(ctx, ["a"])
    assert calls == ["a", "a"] and len(hooks) == 1
    assert any("[a] not restored: no GGUF on this machine" in line for line in logs)
    assert (ctx.artifact("a") / "weights.bin").read_text() == "too large to store"
    assert "restored" not in runner.manifest_of(ctx.artifact("a"))
    assert not [p for p in ctx.artifact("a").parent.iterdir() if p.name.endswith(".partial")]
    # any other error of the hook (a RestoreMismatch, say) stops the run
    shutil.rmtree(ctx.root)
    hook_error["a"] = stored.RestoreMismatch("a: digests differ")
    with pytest.raises(stored.RestoreMismatch):
        runner.run(ctx, ["a"])
    assert calls == ["a", "a"] and not ctx.artifact("a").exists()


def test_no_store_no_restore(fresh):
    ctx, calls, hooks, _, _ = fresh
    runner.run(ctx, ["a"])
    shutil.rmtree(ctx.root)
    ctx.store = None
    runner.run(ctx, ["a"])
    assert calls == ["a", "a"] and not hooks
