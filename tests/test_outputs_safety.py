"""Outputs never destroy what they should not: a user's folder, the run's own inputs, the
working directory. Refusals come before any work (exit 2, one line); symbolic links, stale
temporaries of killed runs and file permissions are handled.

Every test works on a copy of the shipped zoo (or in tmp_path): a regression here deletes
what it points at, and must delete only a copy.
"""

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechmerge.cli import main
from mechmerge.errors import UserError
from mechmerge.zoo import SHIPPED

ALPHA = SHIPPED / "alpha"


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def zoo_src(tmp_path_factory):
    """A read-only reference copy: tests copy it again before anything destructive."""
    d = tmp_path_factory.mktemp("src") / "alpha"
    shutil.copytree(ALPHA, d)
    return d


@pytest.fixture
def zoo(zoo_src, tmp_path):
    d = tmp_path / "zoo"
    shutil.copytree(zoo_src, d)
    return d


def recipe(zoo: Path, where: Path) -> Path:
    r = where / "r.yaml"
    r.write_text(f"merge_method: task_arithmetic\nbase_model: {zoo}/base\ndtype: float32\n"
                 f"models:\n  - model: {zoo}/experts/rev\n    parameters: {{weight: 1.0}}\n")
    return r


@pytest.fixture
def no_compute(monkeypatch):
    """Refusals must come before any work: merging or scoring fails the test."""
    import mechmerge.patching.score as sc
    from mechmerge.merge import engine

    def fail(*a, **k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(engine, "run_to_dir", fail)
    monkeypatch.setattr(sc, "prepare", fail)


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- 1. the demo's --force ------------------------------------------------------------------

def test_demo_force_never_deletes_a_users_folder(tmp_path, monkeypatch, no_compute):
    from mechmerge.zoo.demo import DemoOptions, run_demo

    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "sub" / "data.csv").write_text("1,2")
    before = snapshot(mine)
    with pytest.raises(UserError, match="not a demo's folder"):
        run_demo(DemoOptions(out=str(mine), force=True))
    monkeypatch.chdir(mine)
    with pytest.raises(UserError, match="not a demo's folder"):
        run_demo(DemoOptions(out=".", force=True))
    assert snapshot(mine) == before


def test_demo_force_starts_over_in_its_own_folder_only(zoo, tmp_path, monkeypatch, no_compute):
    """Under --force the demo deletes its own artifacts, in a folder it marked, and nothing else;
    `--out .` inside that folder works (the folder itself stays)."""
    from mechmerge.zoo.demo import DemoOptions, run_demo

    out = tmp_path / "demo"
    with pytest.raises(AssertionError, match="work started"):  # stopped at scoring, the folder made
        run_demo(DemoOptions(out=str(out)))
    marker = out / ".mechmerge-demo"
    assert marker.is_file()
    (out / "merged-guided").mkdir()
    (out / "merged-guided" / "model.safetensors").write_bytes(b"x")
    (out / "scores.json").write_text("{}")
    (out / "scores.json.journal").write_text("")
    (out / ".merged-uniform.h.1.abcdefgh.partial").mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file in the demo's folder stays
    with pytest.raises(UserError, match="pass --force"):
        run_demo(DemoOptions(out=str(out)))
    monkeypatch.chdir(out)
    with pytest.raises(AssertionError, match="work started"):
        run_demo(DemoOptions(out=".", force=True))
    assert sorted(p.name for p in out.iterdir()) == [marker.name, "notes.txt"]
    # a folder from before the marker, holding only demo artifacts, is still recognised
    old = tmp_path / "old"
    old.mkdir()
    (old / "guided.yaml").write_text("")
    with pytest.raises(AssertionError, match="work started"):
        run_demo(DemoOptions(out=str(old), force=True))
    assert sorted(p.name for p in old.iterdir()) == [marker.name]
    monkeypatch.setattr("mechmerge.zoo.locate", lambda name: zoo)
    with pytest.raises(UserError, match="lies inside the input"):
        run_demo(DemoOptions(out=str(zoo / "experts" / "x")))


# ---- 2. an output that is, holds or lies inside an input -------------------------------------

def test_merge_refuses_to_overwrite_its_inputs(zoo, tmp_path, capsys, no_compute):
    r = recipe(zoo, tmp_path)
    before = snapshot(zoo)
    for out, fragment in [(zoo / "experts" / "rev", "is the input"),
                          (zoo / "base", "is the input"),
                          (zoo / "experts" / "rev" / "sub", "lies inside the input"),
                          (zoo, "holds the input"),
                          (tmp_path, "holds the input")]:  # the folder of the recipe itself
        code, err = run(["merge", r, "--out", out, "--force"], capsys)
        assert code == 2 and fragment in err and "Traceback" not in err, (out, err)
    assert snapshot(zoo) == before and r.is_file()


def test_merge_refuses_a_folder_holding_the_input_zoo(zoo_src, tmp_path, capsys, no_compute):
    wrap = tmp_path / "wrap"
    shutil.copytree(zoo_src, wrap / "zoo")
    (wrap / "config.json").write_text("{}")  # even if it looks like an earlier merge
    r = recipe(wrap / "zoo", tmp_path)
    code, err = run(["merge", r, "--out", wrap, "--force"], capsys)
    assert code == 2 and "holds the input" in err
    assert (wrap / "zoo" / "experts" / "rev" / "model.safetensors").is_file()


def test_merge_refuses_to_replace_a_folder_holding_its_eval_file(zoo, tmp_path, capsys, no_compute):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("{}")
    ev = out / "eval.json"
    ev.write_text('{"tasks": {"rev": {"accuracy": 1, "logprob": 0, "n": 1}}}')
    code, err = run(["merge", recipe(zoo, tmp_path), "--out", out, "--force", "--eval", ev], capsys)
    assert code == 2 and "holds the input" in err and ev.is_file()


def test_score_refuses_to_write_over_a_model_or_probe_file(zoo, capsys, no_compute):
    weights = zoo / "experts" / "rev" / "model.safetensors"
    probes = zoo / "probes" / "rev.score.jsonl"
    before = weights.read_bytes(), probes.read_bytes()
    for out, fragment in [(weights, "lies inside the input"), (probes, "is the input")]:
        code, err = run(["score", "--base", zoo / "base", "--expert", f"rev={zoo / 'experts' / 'rev'}",
                         "--probes", f"rev={probes}", "--out", out, "--force", "--no-progress"], capsys)
        assert code == 2 and fragment in err, err
    assert (weights.read_bytes(), probes.read_bytes()) == before


@pytest.fixture(scope="module")
def zoo_scores(zoo_src, tmp_path_factory):
    """A scores file of a zoo copy (rev and shift, two probes each)."""
    d = tmp_path_factory.mktemp("scored")
    z = d / "zoo"
    shutil.copytree(zoo_src, z)
    out = d / "scores.json"
    args = ["score", "--base", z / "base", "--max-probes", "2", "--granularity", "layer", "--out", out, "--no-progress"]
    for name in ("rev", "shift"):
        args += ["--expert", f"{name}={z / 'experts' / name}", "--probes", f"{name}={z / 'probes' / name}.score.jsonl"]
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 0
    return d, z, out


def test_commands_reading_scores_refuse_to_overwrite_them(zoo_scores, capsys, monkeypatch):
    d, z, scores = zoo_scores
    probe = z / "probes" / "rev.score.jsonl"
    before = scores.read_bytes(), (z / "base" / "config.json").read_bytes(), probe.read_bytes()
    import mechmerge.analysis.conflict as cf

    monkeypatch.setattr(cf, "static_conflict", lambda *a, **k: pytest.fail("work started"))
    cases = [
        (["recipe", scores, "--out", scores, "--force", "--no-progress"], "is the input"),
        (["recipe", scores, "--out", z / "base" / "config.json", "--force", "--no-progress"], "lies inside the input"),
        (["conflict", scores, "--out", scores, "--force", "--no-causal"], "is the input"),
        # the models and probes the scores name are inputs too
        (["conflict", scores, "--out", z / "base" / "config.json", "--force", "--no-causal"], "lies inside the input"),
        (["conflict", scores, "--out", probe, "--force"], "is the input"),
        (["recipe", scores, "--out", probe, "--force", "--no-progress"], "is the input"),
        (["agree", scores, scores, "--out", scores, "--force"], "is the input"),
    ]
    for args, fragment in cases:
        code, err = run(args, capsys)
        assert code == 2 and fragment in err, (args, err)
    assert (scores.read_bytes(), (z / "base" / "config.json").read_bytes(), probe.read_bytes()) == before


def test_eval_and_track_refuse_to_write_into_their_models(zoo, capsys, monkeypatch):
    import mechmerge.evaluate.run as ev
    from mechmerge.patching import score as sc

    monkeypatch.setattr(ev.Checkpoint, "open", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(sc, "score", lambda *a, **k: pytest.fail("work started"))
    rev, probes = zoo / "experts" / "rev", zoo / "probes" / "rev.test.jsonl"
    before = snapshot(zoo)
    code, err = run(["eval", rev, "--probes", f"rev={probes}", "--json", rev / "config.json", "--force"], capsys)
    assert code == 2 and "lies inside the input" in err, err
    code, err = run(["eval", rev, "--probes", f"rev={probes}", "--json", probes, "--force"], capsys)
    assert code == 2 and "is the input" in err, err
    ck = zoo / "checkpoints" / "rev"
    steps = sorted(ck.iterdir())
    code, err = run(["track", "--base", zoo / "base", "--checkpoint", f"a={steps[0]}", "--checkpoint", f"b={steps[1]}",
                     "--probes", probes, "--out", steps[0] / "config.json", "--force", "--no-progress"], capsys)
    assert code == 2 and "lies inside the input" in err, err
    assert snapshot(zoo) == before


def test_compare_refuses_a_results_folder_inside_a_model(zoo, capsys, monkeypatch):
    from mechmerge.patching import score as sc

    monkeypatch.setattr(sc, "score", lambda *a, **k: pytest.fail("work started"))
    before = snapshot(zoo)
    code, err = run(["compare", zoo, "--out", zoo / "experts" / "rev" / "results", "--no-progress"], capsys)
    assert code == 2 and "lies inside the input" in err, err
    assert snapshot(zoo) == before


def test_zoo_build_never_touches_the_shipped_zoos(tmp_path, monkeypatch):
    from mechmerge.zoo import build as zb

    shipped = tmp_path / "pkg" / "data"  # a stand-in: a regression must not delete the real one
    shutil.copytree(ALPHA, shipped / "alpha")
    monkeypatch.setattr(zb, "SHIPPED", shipped, raising=False)
    monkeypatch.setattr(zb, "train_models", lambda *a, **k: pytest.fail("work started"))
    before = snapshot(shipped)
    for out, fragment in [(shipped / "alpha", "lies inside"), (shipped, "is the input"), (shipped.parent, "holds")]:
        with pytest.raises(UserError, match=fragment):
            zb.build_zoo("alpha", out, force=True)
    assert snapshot(shipped) == before


def test_check_output_compares_resolved_paths(tmp_path, monkeypatch):
    """Relative paths, `..` and symbolic links lead to the same input; a GGUF file is an input."""
    from mechmerge.io import check_output

    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    gguf = tmp_path / "models" / "x.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "link").symlink_to(model)
    monkeypatch.chdir(tmp_path / "models")
    for out, fragment in [("m", "is the input"), (tmp_path / "link", "is the input"),
                          (tmp_path / "link" / "sub", "lies inside"), ("m/../m/x", "lies inside")]:
        with pytest.raises(UserError, match=fragment):
            check_output(out, True, "output directory", directory=True, inputs=[str(model)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="holds the input"):
        check_output("models", True, "output directory", directory=True, inputs=["models/x.gguf"])
    # a results file beside a model's files is fine; one of the model's own files is not
    assert check_output(model / "eval.json", False, "results JSON", inputs=[str(model)])
    with pytest.raises(UserError, match="lies inside"):
        check_output(model / "model.safetensors", True, "results JSON", inputs=[str(model)])
    # Hub ids and absent paths are not compared; other outputs pass
    assert check_output(tmp_path / "new", False, "out", directory=True, inputs=["org/model", None, ""])


# ---- 3. paths that used to fail after the work: '.', '..', '~', symbolic links --------------

def test_merge_refuses_the_working_and_home_directories_before_merging(zoo, tmp_path, capsys, monkeypatch,
                                                                       no_compute):
    r = recipe(zoo, tmp_path)
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", work):
        for extra in ([], ["--force"]):
            code, err = run(["merge", r, "--out", out, *extra], capsys)
            assert code == 2 and "the current directory" in err and "Traceback" not in err, (out, err)
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    code, err = run(["merge", r, "--out", home, "--force"], capsys)
    assert code == 2 and "your home directory" in err
    assert (home / "docs").is_dir() and work.is_dir()


def test_merge_force_replaces_only_an_earlier_model(zoo, tmp_path, capsys, no_compute):
    mine = tmp_path / "projects"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, err = run(["merge", recipe(zoo, tmp_path), "--out", mine, "--force"], capsys)
    assert code == 2 and "not an earlier output" in err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_merge_through_symbolic_links(zoo, tmp_path, capsys):
    r = recipe(zoo, tmp_path)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "target")
    code, err = run(["merge", r, "--out", dangling], capsys)
    assert code == 0, err
    assert dangling.is_symlink() and (tmp_path / "target" / "config.json").is_file()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    stamp = (tmp_path / "target" / "model.safetensors").stat().st_mtime_ns
    code, err = run(["merge", r, "--out", link, "--force"], capsys)
    assert code == 0, err
    assert link.is_symlink() and (link / "config.json").is_file()
    assert (tmp_path / "target" / "model.safetensors").stat().st_mtime_ns != stamp
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


# ---- 4. unfinished outputs of killed runs ----------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_runs_partial_output_is_removed_by_the_next_run(tmp_path):
    """kill -9 inside atomic_dir leaves `.NAME.HOST.PID.xxxxxxxx.partial`; the next run into
    the same output removes it (its process is gone), and nothing else."""
    from mechmerge.io import atomic_dir

    out = tmp_path / "merged"
    code = textwrap.dedent(f"""
        import os, signal
        from mechmerge.io import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert p.returncode == -signal.SIGKILL
    [stale] = [d for d in tmp_path.iterdir() if d.name.endswith(".partial")]
    host = stale.name.split(".")[2]  # .merged.HOST.PID.xxxxxxxx.partial
    keep = {
        "live": tmp_path / f".merged.{host}.{os.getppid()}.abcdefgh.partial",  # a running process's
        "other output": tmp_path / f".merged-2.{host}.{_dead_pid()}.abcdefgh.partial",
        "other host": tmp_path / f".merged.elsewhere.{_dead_pid()}.abcdefgh.partial",
        "old name": tmp_path / ".merged.abcdefgh.partial",
        "not ours": tmp_path / f".merged.{host}.{_dead_pid()}.notmkdtemp.partial",
    }
    for d in keep.values():
        d.mkdir()
    notes = []
    import mechmerge.io as io

    real = getattr(io, "clean_stale_partials", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "clean_stale_partials", lambda p, note=None: real(p, notes.append), raising=False)
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
    assert not stale.exists()
    assert all(d.is_dir() for d in keep.values())
    assert any(str(stale) in n and "removed" in n for n in notes)
    assert any(str(keep["old name"]) in n for n in notes) and any(str(keep["other host"]) in n for n in notes)
    assert (out / "config.json").is_file()


def test_the_partial_of_an_output_built_inside_a_partial_is_removed_too(tmp_path):
    """A pipeline stage imports a model into its own temporary folder; killed, it leaves
    `.base.H.P.x.partial` and, beside it, `..base.H.P.x.partial.H.P.y.partial` (a model copy)."""
    from mechmerge.io import _host, clean_stale_partials

    dead = _dead_pid()
    outer = tmp_path / f".base.{_host()}.{dead}.abcdefgh.partial"
    inner = tmp_path / f"..base.{_host()}.{dead}.abcdefgh.partial.{_host()}.{dead}.ijklmnop.partial"
    for d in (outer, inner):
        d.mkdir()
    clean_stale_partials(tmp_path / "base", note=lambda m: None)
    assert not outer.exists() and not inner.exists()


# ---- 5. permissions of finished outputs ------------------------------------------------------

def test_merged_model_is_readable_like_other_outputs(zoo, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "merged"
        code, err = run(["merge", recipe(zoo, tmp_path), "--out", out], capsys)
        assert code == 0, err
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
        assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
    finally:
        os.umask(old)
