"""Common mistakes at the command line: each gets one line saying what to do, exit status 2, no
traceback, and leaves nothing behind (cases found by trying the CLI as a new user would)."""

import json
import shutil

import pytest

from mechmerge.cli import main


def run(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    return e.value.code, err


def refused(args, capsys, fragment):
    code, err = run(args, capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, (args, err)


@pytest.mark.parametrize("args, missing", [
    (["merge"], "Missing argument 'RECIPE'"), (["merge", "r.yaml"], "Missing option '--out'"),
    (["recipe", "s.json"], "Missing option '--out'"), (["publish", "m"], "Missing option '--repo'"),
    (["import-gguf", "t.gguf"], "Missing option '--out'"), (["compare"], "Missing argument 'SUITE'"),
    (["agree", "s.json"], "Missing argument 'OTHER'"), (["conflict"], "Missing argument 'SCORES'"),
])
def test_a_missing_required_argument_is_named(args, missing, capsys):
    refused(args, capsys, missing)


def test_non_finite_scores_and_parameters(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    r = tmp_path / "r.yaml"
    data = json.loads(scores.read_text())
    unit = next(iter(data["units"]))
    for bad in (float("nan"), float("inf")):
        data["experts"]["a"]["modules"][unit]["patch_in"] = bad
        f = tmp_path / f"{bad}.json"
        f.write_text(json.dumps(data))  # json writes NaN / Infinity, and reads them back
        refused(["recipe", f, "--out", r, "--no-calibrate"], capsys, "expected a finite number or null")
    for args, fragment in [
        (["--param", "scale=nan"], "must be a finite number"),
        (["--strategy", "topk", "--param", "k=-3"], "k='-3' is out of range (expected >= 1)"),
        (["--param", "alpha=3"], "alpha='3' is out of range (expected [0.0, 1.0])"),
        (["--method", "ties", "--method-param", "density=5"], "expected a share in (0, 1]"),
        (["--expert", "a", "--expert", "a"], "--expert 'a' is given twice"),
    ]:
        refused(["recipe", scores, "--out", r, "--no-calibrate", *args], capsys, fragment)
    assert not r.exists()
    (tmp_path / "adir").mkdir()
    refused(["recipe", scores, "--out", tmp_path / "adir", "--force"], capsys, "is a directory; give a file path")


def test_merge_names_what_is_wrong_before_merging(scored_pair, tmp_path, capsys, monkeypatch):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run(["recipe", scores, "--out", recipe, "--no-calibrate"], capsys)[0] == 0
    moved = tmp_path / "moved.yaml"
    moved.write_text(recipe.read_text().replace(str(d / "a"), str(d / "gone" / "a")))
    refused(["merge", moved, "--out", tmp_path / "m"], capsys, f"model '{d / 'gone' / 'a'}' named in the recipe not found")
    monkeypatch.chdir(tmp_path)  # a relative path: the message says where it was looked for
    rel = tmp_path / "rel.yaml"
    rel.write_text(recipe.read_text().replace(str(d / "a"), "models/experts/a"))
    refused(["merge", rel, "--out", "m"], capsys, f"relative paths resolve from the current directory, {tmp_path}")
    not_mk = tmp_path / "n.yaml"
    not_mk.write_text("hello: world\n")
    refused(["merge", not_mk, "--out", "m"], capsys, f"{not_mk}: not a mergekit configuration (no merge_method")
    for name, content in (("list.json", "[1]"), ("other.json", '{"a": 1}')):
        (tmp_path / name).write_text(content)
        refused(["merge", recipe, "--out", "m", "--eval", name], capsys, "not a `mechmerge eval --json` file")
    (tmp_path / "afile").write_text("keep me")
    refused(["merge", recipe, "--out", "afile", "--force"], capsys, "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / ".afile.old").exists()
    assert not (tmp_path / "m").exists()


def test_eval_and_plot_refuse_impossible_values(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    for flag in ("--batch-size", "--max-new-tokens", "--max-probes"):
        refused(["eval", d / "base", "--probes", f"a={d / 'a.jsonl'}", flag, "0"], capsys, f"{flag} 0: must be >= 1")
    (tmp_path / "afile").write_text("")
    refused(["plot", scores, "--out", tmp_path / "afile"], capsys, "is a file; give a folder for the PNGs")
    refused(["plot", scores, "--top", "0"], capsys, "--top")
    track = tmp_path / "t.json"
    track.write_text(json.dumps({"format": "mechmerge.track", "checkpoints": []}))
    refused(["plot", track], capsys, "track file lacks 'top'")
    (tmp_path / "l.json").write_text("[]")
    refused(["plot", tmp_path / "l.json"], capsys, "got a JSON list")


def test_score_refuses_a_ci_level_that_is_not_a_fraction(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    out = tmp_path / "s.json"
    for level in ("95", "0", "1"):
        refused(["score", "--base", d / "base", "--expert", f"a={d / 'a'}", "--probes", f"a={d / 'a.jsonl'}",
                 "--out", out, "--bootstrap", "10", "--ci-level", level], capsys, "--ci-level is a fraction, e.g. 0.95")
    assert not out.exists() and not list(tmp_path.iterdir())  # no scores, no journal


def test_compare_checks_its_suite_and_options_before_any_work(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    good = {"name": "pair", "base": str(d / "base"), "experts": {"a": str(d / "a"), "b": str(d / "b")},
            "splits": {s: {"a": str(d / "a.jsonl"), "b": str(d / "b.jsonl")} for s in ("score", "dev", "test")}}
    suite = tmp_path / "suite.json"
    out = tmp_path / "run"
    for broken, fragment in [({}, "missing key 'base'"), ([], "expected a JSON object, got list"),
                             ({**good, "experts": ["a", "b"]}, "'experts' must map"),
                             ({**good, "splits": {"dev": ["x"]}}, "'splits' must map"),
                             (json.loads(scores.read_text()), "'mechmerge.scores' file, not a suite"),
                             ({**good, "max_new_tokens": 0}, "'max_new_tokens' must be a positive integer")]:
        suite.write_text(json.dumps(broken))
        refused(["compare", suite, "--out", out], capsys, fragment)
    suite.write_text(json.dumps(good))
    for args, fragment in [(["--sizes", "bogus"], "--sizes 'bogus'"), (["--sizes", "0"], "positive integers"),
                           (["--strategy", "mixx"], "did you mean 'mix'"), (["--candidates", "0"], "--candidates 0"),
                           (["--score-method", "exactt"], "unknown score method")]:
        refused(["compare", suite, "--out", out, *args], capsys, fragment)
    missing = {**good, "splits": {**good["splits"], "test": {"a": str(d / "a.jsonl"), "b": str(tmp_path / "x.jsonl")}}}
    suite.write_text(json.dumps(missing))
    refused(["compare", suite, "--out", out], capsys, f"file '{tmp_path / 'x.jsonl'}' not found")
    assert not out.exists()  # nothing was scored, no folder was made
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_the_python_api_refuses_what_the_cli_refuses():
    from mechmerge.errors import UserError
    from mechmerge.evaluate.run import EvalOptions
    from mechmerge.patching.score import ScoreOptions

    with pytest.raises(UserError, match="--granularity 'heads': expected one of module, layer, head"):
        ScoreOptions(base="b", experts={}, probes={}, out="o", granularity="heads")
    with pytest.raises(UserError, match="--batch-size 0: must be >= 1"):
        EvalOptions(model="m", probes={}, batch_size=0)
