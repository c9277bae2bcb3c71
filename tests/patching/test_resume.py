"""A killed scoring run resumes to the same bytes; runs are deterministic."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import make_model, noisy_expert, write_probes


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    base = make_model("llama", d / "base", seed=2, layers=4)
    expert = noisy_expert(base, d / "e", seed=3, scale=0.05)
    probes = write_probes(d / "p.jsonl", [(f"rev {'abcdefghij'[i % 10:]}{i}=", f"{i}x{i}") for i in range(24)])
    args = ["--base", str(base), "--expert", f"x={expert}", "--probes", f"x={probes}", "--batch-size", "2",
            "--cache-mb", "0", "--no-progress"]
    return d, args


def _score(args, out, extra=(), wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mechmerge", "score", *args, "--out", str(out), *extra]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """One uninterrupted run, the yardstick of the resume and determinism tests."""
    d, args = job
    ref = tmp_path_factory.mktemp("ref") / "ref.json"
    assert _score(args, ref).returncode == 0
    return ref


def test_kill_and_resume_gives_the_uninterrupted_result(job, reference, tmp_path):
    d, args = job
    ref = reference
    out = tmp_path / "killed.json"
    journal = tmp_path / "killed.json.journal"
    p = _score(args, out, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline:
        if journal.exists() and journal.read_text().count("\n") > 40:
            break
        assert p.poll() is None, "run finished before it could be killed"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()  # nothing that looks finished
    done = journal.read_text().count("\n") - 1
    assert done > 0
    lines = journal.read_text().splitlines(keepends=True)
    r = _score(args, out, ["--resume"])
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert not journal.exists()

    # the resumed run really used the journal: one finished measurement altered there shows up in
    # exactly that unit's score (a run that recomputed everything would give the reference again)
    import json

    i, rec = next((i, json.loads(line)) for i, line in enumerate(lines[1:], 1)
                  if line.endswith("\n") and json.loads(line)["p"] == "patch_in")
    rec["lp"] += 1.0
    lines[i] = json.dumps(rec) + "\n"
    altered = tmp_path / "altered.json"
    (tmp_path / "altered.json.journal").write_text("".join(lines))
    assert _score(args, altered, ["--resume"]).returncode == 0
    a, b = json.loads(ref.read_text()), json.loads(altered.read_text())
    changed = [u for u, s in b["experts"]["x"]["modules"].items()
               if s["patch_in"] != a["experts"]["x"]["modules"][u]["patch_in"]]
    assert changed == [rec["u"]]


def test_resume_refuses_a_journal_of_other_inputs(job, tmp_path):
    d, args = job
    out = tmp_path / "s.json"
    (tmp_path / "s.json.journal").write_text('{"fingerprint": "something else"}\n')
    r = _score(args, out, ["--resume"])
    assert r.returncode == 2 and "journal" in r.stderr and "Traceback" not in r.stderr


def test_resume_refuses_the_journals_of_another_process_count(job, tmp_path):
    """Two ranks' journals hold the units dealt to each; one process cannot take them over (it
    used to start afresh and leave them behind)."""
    d, args = job
    out = tmp_path / "s.json"
    for r in (0, 1):
        (tmp_path / f"s.json.journal.rank{r}").write_text('{"fingerprint": "x"}\n')
    r = _score(args, out, ["--resume"])
    assert r.returncode == 2 and "another number of processes" in r.stderr, r.stderr[-500:]
    assert not out.exists()


def test_same_inputs_give_byte_identical_scores(job, reference, tmp_path):
    d, args = job
    again = tmp_path / "again.json"
    assert _score(args, again).returncode == 0
    assert again.read_bytes() == reference.read_bytes()


def test_one_named_gpu_for_every_rank_is_warned_about(monkeypatch, capsys):
    from mechmerge.patching import distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.local_device("cuda:0") == "cuda:0"
    assert "every process computes on cuda:0" in capsys.readouterr().err
    assert dist.local_device("cpu") == "cpu" and capsys.readouterr().err == ""
