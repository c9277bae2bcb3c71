"""Attribution and hybrid scores against exact ones; sharded scoring against one process."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import default_pairs, make_model, noisy_expert, write_probes
from mechmerge.patching.score import ScoreOptions, score


@pytest.fixture(scope="module")
def small_change(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    base = make_model("qwen2", d / "base", seed=1)  # biases, GQA, tied embeddings
    expert = noisy_expert(base, d / "e", seed=5, scale=1e-4)
    probes = write_probes(d / "p.jsonl", default_pairs(6))
    run = {}
    for method in ("exact", "attribution", "hybrid"):
        run[method] = score(ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes)},
                                         out=str(d / f"{method}.json"), method=method, progress=False,
                                         **({"top_k": 5} if method == "hybrid" else {})))
    return d, run


def _vec(data, key):
    mods = data["experts"]["x"]["modules"]
    return np.array([mods[u][key] if mods[u][key] is not None else np.nan for u in mods])


def test_attribution_is_the_first_order_of_exact(small_change):
    d, run = small_change
    for key in ("patch_in", "knockout", "anchor"):
        ex, at = _vec(run["exact"], key), _vec(run["attribution"], key)
        ok = ~np.isnan(ex)
        assert np.array_equal(ok, ~np.isnan(at))
        # tiny weight changes: the Taylor term is within a few percent of the largest score
        assert np.abs(ex[ok] - at[ok]).max() < 0.05 * np.abs(ex[ok]).max(), key
    assert all(m["method"] == "attribution" for m in run["attribution"]["experts"]["x"]["modules"].values())


def test_hybrid_measures_its_top_units_exactly(small_change):
    d, run = small_change
    ex = run["exact"]["experts"]["x"]["modules"]
    hy = run["hybrid"]["experts"]["x"]["modules"]
    exact_units = [u for u, s in hy.items() if s["method"] == "exact"]
    assert 5 <= len(exact_units) < len(hy)
    for u in exact_units:
        assert hy[u]["patch_in"] == ex[u]["patch_in"] and hy[u]["knockout"] == ex[u]["knockout"]
    top = lambda mods: set(sorted(mods, key=lambda u: -mods[u]["patch_in"])[:5])  # noqa: E731
    assert top(hy) == top(ex)
    assert top(ex) <= set(exact_units)


def test_two_processes_write_what_one_writes(small_change, tmp_path):
    d, run = small_change
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "mechmerge", "score", "--base", str(d / "base"), "--expert", f"x={d / 'e'}",
           "--probes", f"x={d / 'p.jsonl'}", "--out", str(out), "--no-progress"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.read_bytes() == (d / "exact.json").read_bytes()
    assert not list(tmp_path.glob("*.journal*"))


def test_ranks_that_would_choose_differently_follow_rank_0(small_change, tmp_path):
    """Rank 1 is made to pick another anchor layer and other hybrid units (as nondeterministic
    GPU kernels could); the ranks must still measure rank 0's choices, so the file equals one
    process's. Without the agreement rank 1 dealt itself units from another list."""
    d, run = small_change
    wrapper = tmp_path / "rank1_differs.py"
    wrapper.write_text(
        "import os, sys\n"
        "from mechmerge.patching import engine, expert\n"
        "if os.environ['RANK'] == '1':\n"
        "    engine.choose_anchor_layer = lambda b, e, L: 0\n"
        "    pick = expert.select_for_exact\n"
        "    expert.select_for_exact = lambda est, units, k, gap, m: list(reversed(units))[:len(pick(est, units, k, gap, m))]\n"
        "from mechmerge.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "dist-hybrid.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(wrapper), "score", "--base", str(d / "base"), "--expert", f"x={d / 'e'}",
           "--probes", f"x={d / 'p.jsonl'}", "--out", str(out), "--method", "hybrid", "--top-k", "5",
           "--no-progress"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.read_bytes() == (d / "hybrid.json").read_bytes()
