"""Properties of Weight Patching scores on planted experts of every family."""

import json

import pytest
import torch
from mechmerge.patching import engine
from mechmerge.patching.score import ScoreOptions, prepare, score


def _opts(base, expert, probes, out, **kw):
    return ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes)}, out=str(out),
                        progress=False, **kw)


def test_planted_units_are_the_only_nonzero_scores(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    data = score(_opts(base, expert, probes_file, tmp_path / "s.json"))
    e = data["experts"]["x"]
    assert e["baseline"]["gap"] > 0.01 and e["reliable"]
    mods = e["modules"]
    assert list(mods) == list(data["units"])
    nonzero = {u for u, s in mods.items() if s["patch_in"] != 0.0 or s["knockout"] != 0.0}
    assert nonzero == set(units)
    for u, s in mods.items():
        if u not in units:
            # exactly zero, not merely small
            assert s["patch_in"] == 0.0 and s["knockout"] == 0.0 and s["identical"]
            assert s["anchor"] in (0.0, None)
    # the file on disk is what was returned
    assert json.loads((tmp_path / "s.json").read_text())["experts"]["x"]["modules"].keys() == mods.keys()


def test_patching_every_unit_recovers_the_expert(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    setup = prepare(_opts(base, expert, probes_file, tmp_path / "s.json"))
    ck = setup.experts["x"]
    batches = setup.batches["x"]
    b = engine.measure_baseline(setup.runner, batches)
    with setup.swapper.swapped_to(ck, setup.base, setup.param_names):
        e = engine.measure_baseline(setup.runner, batches)
    with setup.swapper.patched(setup.units, ck):
        all_in = engine.measure_baseline(setup.runner, batches)
    recovery = (all_in.m - b.m) / (e.m - b.m)
    assert recovery == pytest.approx(1.0, abs=1e-9)


def _assert_model_is_checkpoint(setup):
    for name in setup.param_names:
        assert torch.equal(setup.swapper.params[name].data, setup.base.get(name).to(torch.float32)), name


def test_base_is_bit_identical_after_scoring_and_after_a_failure(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    setup = prepare(_opts(base, expert, probes_file, tmp_path / "s.json"))
    ck = setup.experts["x"]
    with setup.swapper.swapped_to(ck, setup.base, setup.param_names):
        pass
    _assert_model_is_checkpoint(setup)
    with pytest.raises(KeyboardInterrupt):
        with setup.swapper.patched(setup.units, ck):
            raise KeyboardInterrupt
    _assert_model_is_checkpoint(setup)
    with pytest.raises(RuntimeError):
        with setup.swapper.swapped_to(ck, setup.base, setup.param_names):
            with setup.swapper.patched(setup.units[:3], setup.base):
                raise RuntimeError("boom")
    _assert_model_is_checkpoint(setup)
    from mechmerge.patching.journal import Journal
    from mechmerge.patching.progress import Progress
    from mechmerge.patching.expert import measure_expert as _score_expert

    j = Journal(tmp_path / "j", "fp", resume=False)
    with Progress(enabled=False) as bar:
        _score_expert(setup, "x", j, bar)
    _assert_model_is_checkpoint(setup)


def test_nested_patches_restore_what_the_outer_patch_wrote(planted, probes_file, tmp_path):
    """Patches restore from the checkpoint the model equals; inside a patch it equals none,
    so an inner patch of the same units must put the outer patch's weights back."""
    fam, base, expert, units = planted
    setup = prepare(_opts(base, expert, probes_file, tmp_path / "s.json"))
    ck = setup.experts["x"]
    patched = [u for u in setup.units if u.name in units]
    with setup.swapper.patched(patched, ck):
        with setup.swapper.patched(patched, setup.base):
            pass
        for u in patched:
            for name in u.tensors:
                assert torch.equal(setup.swapper.params[name].data, ck.get(name).to(torch.float32)), name
    _assert_model_is_checkpoint(setup)


def test_anchor_is_null_above_the_anchor_layer(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    data = score(_opts(base, expert, probes_file, tmp_path / "s.json", anchor_layer=0))
    e = data["experts"]["x"]
    assert e["baseline"]["anchor_layer"] == 0
    for u, s in e["modules"].items():
        layer = data["units"][u]["layer"]
        if layer > 0:
            assert s["anchor"] is None
        else:
            assert s["anchor"] is not None


def test_unreliable_expert_is_flagged(family_base, probes_file, tmp_path):
    fam, base = family_base
    if fam != "llama":
        pytest.skip("one family is enough")
    data = score(_opts(base, base, probes_file, tmp_path / "s.json"))
    e = data["experts"]["x"]
    assert not e["reliable"] and "unreliable" in e["warnings"][0]
    assert all(s["patch_in"] == 0.0 for s in e["modules"].values())


def test_bootstrap_intervals(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    if fam not in ("llama", "gpt2"):
        pytest.skip("two families are enough")
    plain = score(_opts(base, expert, probes_file, tmp_path / "a.json"))
    boot = score(_opts(base, expert, probes_file, tmp_path / "b.json", bootstrap=200))
    pm, bm = plain["experts"]["x"]["modules"], boot["experts"]["x"]["modules"]
    assert boot["experts"]["x"]["bootstrap"] == {"replicates": 200, "level": 0.95}
    inside = total = 0
    for u in pm:
        for key in ("patch_in", "knockout", "anchor"):
            assert pm[u][key] == bm[u][key]  # the point estimates do not change
            iv = bm[u]["ci"].get(key)
            if pm[u]["identical"]:
                assert iv in (None, [0.0, 0.0])
                continue
            if pm[u][key] is None:
                assert iv is None
                continue
            assert iv[0] <= iv[1]
            total += 1
            inside += iv[0] <= pm[u][key] <= iv[1]
    assert total >= 4 and inside >= 0.75 * total
    # the plot draws them: one interval figure per bootstrapped expert, next to the heatmap
    from mechmerge.cli import main as cli

    with pytest.raises(SystemExit) as ex:
        cli(["plot", str(tmp_path / "b.json"), "--out", str(tmp_path / "png")])
    assert ex.value.code == 0
    assert {p.name for p in (tmp_path / "png").glob("*.png")} == {"heatmap-x.png", "intervals-x.png"}


def test_interval_rows_rank_and_mark_ties():
    from mechmerge.report.intervals import interval_rows

    e = {"modules": {
        "a": {"patch_in": 0.9, "ci": {"patch_in": [0.8, 1.0]}},
        "b": {"patch_in": 0.5, "ci": {"patch_in": [0.45, 0.55]}},
        "c": {"patch_in": 0.4, "ci": {"patch_in": [0.3, 0.5]}},   # overlaps b: tie
        "d": {"patch_in": 0.2, "ci": {}},                         # attribution estimate: no interval
        "e": {"patch_in": -0.1, "ci": {"patch_in": [-0.2, 0.0]}},
        "f": {"patch_in": None}}}
    rows = interval_rows(e, "patch_in", 10)
    assert [r.unit for r in rows] == ["a", "b", "c", "d", "e"]
    assert [r.tie_with_next for r in rows] == [False, True, False, False, False]
    assert rows[3].interval is None and rows[0].interval == [0.8, 1.0]
    assert [r.unit for r in interval_rows(e, "patch_in", 2)] == ["a", "b"]


@pytest.mark.parametrize("level", [95, 0.0, 1.0, -0.5, float("nan")])
def test_ci_level_outside_zero_one_is_refused_before_scoring(level, tmp_path):
    """A percentage (95) used to fail in np.percentile after every measurement, leaving a journal a
    corrected --resume could not use (ci_level is in its fingerprint)."""
    from mechmerge.errors import UserError

    opts = _opts(tmp_path / "base", tmp_path / "x", tmp_path / "p.jsonl", tmp_path / "s.json", bootstrap=10,
                 ci_level=level)
    with pytest.raises(UserError, match="--ci-level is a fraction, e.g. 0.95"):
        opts.validate()
    _opts(tmp_path / "base", tmp_path / "x", tmp_path / "p.jsonl", tmp_path / "s.json", ci_level=0.9).validate()
