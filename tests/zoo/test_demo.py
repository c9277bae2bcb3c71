"""`mechmerge demo`, the README's first command, on the shipped zoo: what it prints holds together."""

import pytest

from mechmerge.zoo.demo import DemoOptions, run_demo
from mechmerge.errors import UserError


def test_demo_runs_the_pipeline_and_the_guided_merge_keeps_more(tmp_path):
    table = run_demo(DemoOptions(out=str(tmp_path / "demo")))
    names = ["rev", "shift"]
    assert list(table) == ["base", "expert rev", "expert shift", "uniform merge", "guided merge"]
    for n in names:
        assert table[f"expert {n}"][n]["accuracy"] > 0.9 and table["base"][n]["accuracy"] < 0.1
    mean = {k: sum(r[n]["accuracy"] for n in names) / 2 for k, r in table.items()}
    # the README's demo line: the guided merge ahead of calibrated task arithmetic on rev+shift
    assert mean["guided merge"] > mean["uniform merge"] > mean["base"]
    out = tmp_path / "demo"
    for f in ("scores.json", "guided.yaml", "uniform.yaml", "merged-guided/README.md", "merged-uniform/README.md"):
        assert (out / f).is_file(), f
    with pytest.raises(UserError, match="exists; pass --force"):
        run_demo(DemoOptions(out=str(out)))


def test_demo_refuses_bad_expert_lists(tmp_path):
    with pytest.raises(UserError, match="two or three"):
        run_demo(DemoOptions(out=str(tmp_path / "a"), experts="rev"))
    with pytest.raises(UserError, match="did you mean 'rev'"):
        run_demo(DemoOptions(out=str(tmp_path / "b"), experts="rve,shift"))
