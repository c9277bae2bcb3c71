"""track, conflict and plot on planted experts whose answers are known."""

import json

import pytest
from helpers import plant_expert

from mechmerge.cli import main


def run(*args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


@pytest.fixture(scope="module")
def early(scored_pair):
    d, scores = scored_pair
    return plant_expert(d / "base", d / "a-early", ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"],
                        d / "a.jsonl", steps=5)


def test_track_between_checkpoints(scored_pair, early, tmp_path):
    d, scores = scored_pair
    out = tmp_path / "t.json"
    assert run("track", "--base", d / "base", "--checkpoint", f"early={early}", "--checkpoint", f"late={d / 'a'}",
               "--probes", d / "a.jsonl", "--out", out, "--top-k", "3", "--no-progress") == 0
    t = json.loads(out.read_text())
    assert t["format"] == "mechmerge.track" and t["checkpoints"] == ["early", "late"]
    planted = {"model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"}
    assert set(t["top"]["early"]["all"]) == set(t["top"]["late"]["all"]) == planted
    tr = t["transitions"][0]
    assert tr["distance"]["all"] == 0.0 and tr["distance"]["mlp"] == 0.0
    assert tr["stability_units"] == 2  # both changed only the planted units: the rest are left out
    assert t["reliable"] == {"early": True, "late": True}
    # both planted units together are the whole difference: patching them recovers everything
    assert tr["faithfulness"]["earlier_top"] == pytest.approx(1.0, abs=1e-6)
    assert tr["faithfulness"]["random"] < 0.5
    assert run("plot", out, "--out", tmp_path) == 0 and (tmp_path / "t.png").stat().st_size > 1000


def test_track_with_hybrid_scoring(scored_pair, early, tmp_path):
    """--method hybrid: each checkpoint's top units are measured exactly, the rest estimated; the same
    top sets as exact scoring on these planted checkpoints."""
    d, scores = scored_pair
    out = tmp_path / "t.json"
    assert run("track", "--base", d / "base", "--checkpoint", f"early={early}", "--checkpoint", f"late={d / 'a'}",
               "--probes", d / "a.jsonl", "--out", out, "--top-k", "2", "--method", "hybrid", "--no-progress") == 0
    t = json.loads(out.read_text())
    planted = {"model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"}
    assert set(t["top"]["early"]["all"]) == set(t["top"]["late"]["all"]) == planted
    sc = json.loads((tmp_path / "t.json.scores.json").read_text())
    methods = {u: m["method"] for u, m in sc["experts"]["late"]["modules"].items() if not m["identical"]}
    assert sc["options"]["method"] == "hybrid"
    assert set(methods) == planted and set(methods.values()) == {"exact"}  # the only units that differ


def test_conflict_matrix(scored_pair, tmp_path):
    d, scores = scored_pair
    out = tmp_path / "c.json"
    assert run("conflict", scores, "--top-k", "2", "--out", out) == 0
    c = json.loads(out.read_text())
    pair = c["static"]["pairs"]["a"]["b"]
    # both experts were trained on layers.1.mlp.down_proj: it is their only shared top unit
    assert pair["shared"] == ["model.layers.1.mlp.down_proj"] and pair["overlap"] == 0.5
    # the static conflict is the overlap times the share of shared units whose task vectors point
    # apart: the cosine of (a - base) and (b - base) on the shared unit, from the weight files
    from safetensors.torch import load_file

    name = "model.layers.1.mlp.down_proj.weight"
    w = {m: load_file(str(d / m / "model.safetensors"))[name].double().flatten() for m in ("base", "a", "b")}
    ta, tb = w["a"] - w["base"], w["b"] - w["base"]
    cos = float(ta @ tb / (ta.norm() * tb.norm()))
    assert pair["conflict"] == (0.5 if cos <= 0 else 0.0) and pair["disagree"] == ([pair["shared"][0]] if cos <= 0 else [])
    causal = c["causal"]
    assert causal["a"]["a"]["drop"] == pytest.approx(1.0, abs=1e-6)  # an expert's own planted set is all of it
    assert causal["b"]["b"]["drop"] == pytest.approx(1.0, abs=1e-6)
    # the printed table puts each expert's own drop on the diagonal, the yardstick for its row
    from mechmerge.analysis.conflict import table

    rows = {line.split()[0]: line for line in table(c).splitlines()[2:]}
    assert f"— / {causal['a']['a']['drop']:8.3f}" in rows["a"]
    assert f"{pair['conflict']:10.2f} / {causal['a']['b']['drop']:8.3f}" in rows["a"]


def test_heatmaps(scored_pair, tmp_path):
    d, scores = scored_pair
    assert run("plot", scores, "--out", tmp_path) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"heatmap-a.png", "heatmap-b.png"}


def test_agree(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    for e in data["experts"].values():  # every unit measured, with distinct scores
        for i, s in enumerate(e["modules"].values()):
            s.update(identical=False, patch_in=float(i), knockout=float(-i))
    ref, other = tmp_path / "ref.json", tmp_path / "other.json"
    ref.write_text(json.dumps(data))
    mods = data["experts"]["a"]["modules"]
    top = max(mods, key=lambda u: mods[u]["patch_in"])
    mods[top]["patch_in"] = -1.0  # the top unit to the bottom: top-3 sets share two, ranks shift
    other.write_text(json.dumps(data))
    assert run("agree", ref, other, "--top-k", "3", "--out", tmp_path / "agree.json") == 0
    r = json.loads((tmp_path / "agree.json").read_text())["experts"]
    # one unit moved from rank n-1 to 0, the others up by one: sum d^2 = n(n-1), rho = 1 - 6/(n+1)
    assert r["a"]["patch_in"]["top_k_overlap"] == 2
    assert r["a"]["patch_in"]["spearman"] == pytest.approx(1 - 6 / (len(mods) + 1), abs=1e-9)
    assert r["a"]["patch_in"]["max_abs_diff"] == len(mods)
    assert r["a"]["knockout"]["top_k_overlap"] == 3 and r["a"]["knockout"]["spearman"] == pytest.approx(1.0)
    assert r["b"]["patch_in"]["max_abs_diff"] == 0.0 and r["b"]["patch_in"]["units"] == len(mods)
    assert json.loads((tmp_path / "agree.json").read_text())["missing"] == []
    # an expert OTHER lacks: the others are compared, and the missing one is named, not silently dropped
    capsys.readouterr()
    del data["experts"]["b"]
    other.write_text(json.dumps(data))
    assert run("agree", ref, other, "--out", tmp_path / "partial.json") == 0
    out, err = capsys.readouterr()
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert list(partial["experts"]) == ["a"] and partial["missing"] == ["b"]
    assert f"{other} lacks expert(s) 'b' of {ref}" in err and f"not in {other}, not compared: b" in out
    # another model's units: refused
    data["units"] = {f"x{u}": v for u, v in data["units"].items()}
    other.write_text(json.dumps(data))
    assert run("agree", ref, other) == 2


def test_spearman_gives_tied_values_their_mean_rank():
    """Ordinal ranks would order tied values by position and invent a correlation among them."""
    import numpy as np

    from mechmerge.analysis.stats import average_ranks, spearman

    assert list(average_ranks(np.array([3.0, 0.0, 0.0, 1.0, 0.0]))) == [4.0, 1.0, 1.0, 3.0, 1.0]
    x = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    y = np.array([0.0, 0.0, 0.0, 2.0, 1.0])
    assert spearman(x, y) == pytest.approx(float(np.corrcoef([1, 1, 1, 3, 4], [1, 1, 1, 4, 3])[0, 1]), abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0)


def test_stability_leaves_out_units_neither_checkpoint_changed():
    """Mean ranks do not save a block of shared zeros: 60 units both checkpoints left untouched and 20
    changed units in reversed order correlate at 0.946 over all 80, a stable map by appearance, while
    the changed units alone are exactly anti-correlated. Track's stability, like `agree`, keeps only
    units that differ from the base (here: in at least one of the two checkpoints)."""
    import numpy as np

    from mechmerge.analysis.stats import spearman
    from mechmerge.analysis.track import stability

    x = np.r_[np.zeros(60), np.arange(1.0, 21.0)]
    y = np.r_[np.zeros(60), np.arange(20.0, 0.0, -1.0)]
    assert spearman(x, y) == pytest.approx(0.946, abs=1e-3)  # the inflated value over every unit
    changed = np.r_[np.zeros(60, bool), np.ones(20, bool)]
    rho, n = stability(x, y, changed)
    assert rho == pytest.approx(-1.0, abs=1e-12) and n == 20
    # a unit only one checkpoint changed scores 0 in the other: it moved, and it counts
    changed[0] = True
    x[0] = 100.0
    assert stability(x, y, changed)[1] == 21
    assert stability(x, y, np.zeros(80, bool)) == (None, 0)  # nothing changed: no correlation to give


def test_track_where_no_checkpoint_carries_anything(scored_pair, tmp_path, capsys):
    """Two checkpoints identical to the base: no unit has positive patch_in, the top sets are empty and
    the distance undefined. The progress line says n/a, the JSON is written, the plot says why it is
    empty, and each checkpoint is flagged unreliable with a warning even under --no-progress."""
    import shutil

    d, scores = scored_pair
    for n in ("c1", "c2"):
        shutil.copytree(d / "base", tmp_path / n)
    args = ["track", "--base", d / "base", "--checkpoint", f"c1={tmp_path / 'c1'}", "--checkpoint",
            f"c2={tmp_path / 'c2'}", "--probes", d / "a.jsonl", "--top-k", "3"]
    out = tmp_path / "t.json"
    capsys.readouterr()
    assert run(*args, "--out", out) == 0
    err = capsys.readouterr().err
    assert "c1 -> c2: distance n/a, stability n/a over 0 changed units" in err
    t = json.loads(out.read_text())
    tr = t["transitions"][0]
    assert t["top"]["c1"]["all"] == t["top"]["c2"]["all"] == [] and tr["distance"]["all"] is None
    assert tr["stability"] is None and tr["stability_units"] == 0
    assert t["reliable"] == {"c1": False, "c2": False}
    assert run("plot", out, "--out", tmp_path) == 0 and (tmp_path / "t.png").stat().st_size > 1000
    assert run(*args, "--out", tmp_path / "quiet.json", "--no-progress") == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint 'c1' is not better than the base" in err and "checkpoint 'c2'" in err
    assert "->" not in err  # quiet otherwise


def test_track_controls_have_the_size_of_the_earlier_set(scored_pair, tmp_path):
    """A checkpoint with one changed unit before one with two, top-3: the earlier top set has one unit,
    so its random and magnitude controls have one too (not the later set's two)."""
    d, scores = scored_pair
    one = plant_expert(d / "base", tmp_path / "one", ["model.layers.0.self_attn.v_proj"], d / "a.jsonl", steps=10)
    out = tmp_path / "t.json"
    assert run("track", "--base", d / "base", "--checkpoint", f"one={one}", "--checkpoint", f"late={d / 'a'}",
               "--probes", d / "a.jsonl", "--out", out, "--top-k", "3", "--no-progress") == 0
    t = json.loads(out.read_text())
    assert t["top"]["one"]["all"] == ["model.layers.0.self_attn.v_proj"] and len(t["top"]["late"]["all"]) == 2
    tr = t["transitions"][0]
    assert {k: len(v) for k, v in tr["controls"].items()} == {"random": 1, "magnitude": 1}
    # stability over the units either checkpoint changed: v_proj in both, down_proj in the later one only
    from mechmerge.analysis.stats import spearman

    changed = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]
    assert tr["stability_units"] == 2
    expected = spearman(*[[t["patch_in"][n][u] for u in changed] for n in ("one", "late")])
    assert tr["stability"] == pytest.approx(expected, abs=1e-9)  # (the JSON rounds the scores)


def test_conflict_measures_on_the_scorings_own_setup(scored_pair):
    """Causal conflict re-measures with the options the scores were made with (dtype, batch size,
    probe limit), not with defaults; permissions come from the caller, never from the file."""
    from mechmerge.patching.score import ScoreOptions

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    data["options"].update(dtype="bfloat16", batch_size=3, max_probes=4, allow_pickle=True)
    o = ScoreOptions.from_record(data, device="cpu", progress=False)
    assert (o.dtype, o.batch_size, o.max_probes, o.allow_pickle, o.device) == ("bfloat16", 3, 4, False, "cpu")
    assert o.experts == {n: e["model"] for n, e in data["experts"].items()} and o.base == data["base"]


def test_track_resumes_after_its_scoring_finished(scored_pair, early, tmp_path, monkeypatch, capsys):
    """Killed after scoring (the scores file is written, the track file is not): --resume reuses the
    scores instead of refusing the existing file or scoring every checkpoint again; the scores of
    other options are refused."""
    from mechmerge.patching import score as score_mod

    d, scores = scored_pair
    out = tmp_path / "t.json"
    args = ["track", "--base", d / "base", "--checkpoint", f"early={early}", "--checkpoint", f"late={d / 'a'}",
            "--probes", d / "a.jsonl", "--out", out, "--top-k", "3", "--no-progress"]
    assert run(*args) == 0
    first = out.read_text()
    out.unlink()
    assert run(*args) == 2 and "already exists" in capsys.readouterr().err  # the scores file is there
    monkeypatch.setattr(score_mod, "score", lambda *a, **k: pytest.fail("scored again"))
    assert run(*args, "--resume") == 0
    assert out.read_text() == first
    assert run(*[a if a != "3" else "2" for a in args], "--resume") == 2
    assert "made with other top_k" in capsys.readouterr().err
