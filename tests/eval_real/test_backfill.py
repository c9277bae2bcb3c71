"""eval/real_backfill_paired.py drops exactly the test entries the paired test lacks, keeps their
old values, and --check compares them with what the harness computes again."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "eval" / "real_backfill_paired.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout


def test_drop_then_check(tmp_path):
    path = tmp_path / "real" / "m" / ".work" / "compare" / "run" / "cache.json"
    path.parent.mkdir(parents=True)
    old = {"a": {"accuracy": 0.5, "n": 4}, "plain": {"accuracy": None, "logprob": -1.0, "n": 4}}
    new = {"a": {"accuracy": 0.5, "n": 4, "correct": [1, 1, 0, 0]}}
    cache = {"__protocol__": {"x": 1},
             "test|a+b|guided:mix|s=1": old, "test|a+b|dare_ties|d=1": old,
             "test|a+b|ties|d=1": old,                   # another method: kept
             "dev|a+b|guided:mix|s=1": old,              # dev entries choose the candidate: kept
             "test|a+c|guided:mix|s=1": new}             # already has its answers: kept
    path.write_text(json.dumps(cache))
    out = run("--model", "m", "--cache", str(tmp_path))
    assert "dropped 2 test entries" in out
    left = json.loads(path.read_text())
    assert set(cache) - set(left) == {"test|a+b|guided:mix|s=1", "test|a+b|dare_ties|d=1"}
    # the harness evaluates them again: one the same, one a pass rate lower
    left["test|a+b|guided:mix|s=1"] = new
    left["test|a+b|dare_ties|d=1"] = {"a": {"accuracy": 0.25, "n": 4, "correct": [1, 0, 0, 0]}}
    path.write_text(json.dumps(left))
    out = run("--model", "m", "--cache", str(tmp_path), "--check")
    assert "test|a+b|dare_ties|d=1 a: 0.500 -> 0.250 (-0.250, n=4)" in out and "1 of 2 task accuracies changed" in out
    assert "nothing to drop" in run("--model", "m", "--cache", str(tmp_path))
    # --again drops one entry even with its answers, for a same-machine repeat
    assert "dropped test|a+c|guided:mix|s=1 from" in run("--model", "m", "--cache", str(tmp_path), "--again",
                                                         "test|a+c|guided:mix|s=1")
    assert "test|a+c|guided:mix|s=1" not in json.loads(path.read_text())
