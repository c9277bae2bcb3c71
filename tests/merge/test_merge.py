"""Scores -> recipe -> merged, carded, loadable model; identical to stock mergekit-yaml."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mechmerge.cli import main


def run_cli(*args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code


def _tensors(d):
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_two_commands_to_a_carded_model_identical_to_mergekit(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--no-progress") == 0
    text = recipe.read_text()
    assert "sha256" in text.splitlines()[1] and "strategy: mix" in text
    cfg = yaml.safe_load(text)
    entries = cfg["models"][0]["parameters"]["weight"]
    assert entries[-1].keys() == {"value"}
    assert all(e["filter"].endswith((".weight", ".bias")) for e in entries[:-1])
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= {e["filter"] for e in entries[:-1]}

    out = tmp_path / "merged"
    assert run_cli("merge", str(recipe), "--out", str(out)) == 0
    stock = tmp_path / "stock"
    exe = Path(sys.executable).with_name("mergekit-yaml")
    subprocess.run([str(exe), str(recipe), str(stock)], check=True, capture_output=True)
    ours, theirs = _tensors(out), _tensors(stock)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and (ours[k] == theirs[k]).all(), k

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert set(front["tags"]) >= {"merge", "mergekit", "mechmerge"} and front["library_name"] == "transformers"
    assert "### a" in card and "### b" in card and "model.layers.1.mlp.down_proj" in card
    assert (out / "mechmerge_scores.json").read_bytes() == scores.read_bytes()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template

    # refuses to overwrite; nothing changes
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert run_cli("merge", str(recipe), "--out", str(out)) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert run_cli("merge", str(recipe), "--out", str(out), "--force") == 0


def test_failed_merge_leaves_nothing(scored_pair, tmp_path, monkeypatch):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--strategy", "share") == 0
    from mechmerge.merge import engine

    real = engine.run_to_dir

    def half(text, out_dir, **kw):
        real(text, out_dir, **kw)
        raise RuntimeError("disk full")

    monkeypatch.setattr(engine, "run_to_dir", half)
    out = tmp_path / "merged"
    with pytest.raises(RuntimeError):
        main(["merge", str(recipe), "--out", str(out)])
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


@pytest.mark.parametrize("method,extra", [("ties", ["--method-param", "density=0.5"]),
                                          ("dare_ties", ["--method-param", "density=0.7"]),
                                          ("della", ["--method-param", "density=0.6", "--method-param", "epsilon=0.1"]),
                                          ("breadcrumbs", ["--method-param", "density=0.8", "--method-param", "gamma=0.02"]),
                                          ("linear", [])])
def test_every_method_writes_a_valid_recipe(scored_pair, tmp_path, method, extra):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--strategy", "topk", "--param", "k=2",
                   "--method", method, *extra) == 0
    cfg = yaml.safe_load(recipe.read_text())
    assert cfg["merge_method"] == method
    given = {k: float(v) for k, v in (e.split("=") for e in extra[1::2])}
    experts = [m for m in cfg["models"] if m["model"] in (str(d / "a"), str(d / "b"))]
    assert len(experts) == 2
    for m in experts:  # per-model parameters where mergekit reads them, with the values given
        assert {k: m["parameters"][k] for k in given} == given
    # and mergekit runs it: every tensor finite, the shape of the base's
    from mechmerge.merge.engine import merge_in_memory
    from mechmerge.models.checkpoint import Checkpoint

    base = Checkpoint.open(str(d / "base"))
    merged = merge_in_memory(cfg)
    assert set(merged) >= set(base.tensors) - {"lm_head.weight"}
    assert all(torch.isfinite(t).all() and tuple(t.shape) == tuple(base.tensors[n].shape) for n, t in merged.items()
               if n in base.tensors)


def test_recipe_refuses_unknown_names(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    r = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(r), "--strategy", "shar") == 2
    assert "did you mean 'share'" in capsys.readouterr().err
    assert run_cli("recipe", str(scores), "--out", str(r), "--strategy", "share", "--param", "scal=2") == 2
    assert "did you mean 'scale'" in capsys.readouterr().err
    assert run_cli("recipe", str(scores), "--out", str(r), "--method", "ties", "--method-param", "densty=0.2") == 2
    assert "did you mean 'density'" in capsys.readouterr().err
    assert not r.exists()


def test_publish_uploads_through_the_client_and_never_shows_the_token(scored_pair, tmp_path, monkeypatch, capsys):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--strategy", "share") == 0
    out = tmp_path / "merged"
    assert run_cli("merge", str(recipe), "--out", str(out)) == 0
    # refused up front, before any file is listed: offline mode, then no token anywhere
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert run_cli("publish", str(out), "--repo", "me/merge") == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert run_cli("publish", str(out), "--repo", "me/merge") == 2
    err = capsys.readouterr().err
    assert "no Hub token" in err and "uploading" not in err
    secret = "hf_SECRETtoken123"
    monkeypatch.setenv("HF_TOKEN", secret)
    calls = []

    class FakeHub:
        """Local stand-in of the client: records calls and copies the folder to a 'remote' dir."""

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload_folder", repo_id))
            shutil.copytree(folder_path, tmp_path / "remote" / repo_id)

    from mechmerge.merge import publish

    monkeypatch.setattr(publish, "make_api", lambda: FakeHub())
    assert run_cli("publish", str(out), "--repo", "me/merge", "--dry-run") == 0
    dry = capsys.readouterr().err
    assert "would upload" in dry and "model.safetensors" in dry and not calls
    assert run_cli("publish", str(out), "--repo", "me/merge", "--private") == 0
    err = capsys.readouterr()
    assert calls[0] == ("create_repo", {"repo_id": "me/merge", "private": True, "exist_ok": True, "repo_type": "model"})
    remote = tmp_path / "remote" / "me/merge"
    assert (remote / "README.md").read_text() == (out / "README.md").read_text()
    assert secret not in err.out + err.err
    for f in remote.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes()
    assert run_cli("publish", str(out), "--repo", "not a repo") == 2
    assert run_cli("publish", str(tmp_path), "--repo", "me/x") == 2


def test_merge_output_carries_no_dependency_noise(scored_pair, tmp_path):
    """mergekit 0.1.5 sets `torch_dtype` on the merged config and transformers 5 warns about it on
    its own logger, which quieting the root logger does not reach. A fresh process, as a user runs
    it: under pytest transformers' handler does not write where the user would see it."""
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--no-progress") == 0
    exe = Path(sys.executable).with_name("mechmerge")
    done = subprocess.run([str(exe), "merge", str(recipe), "--out", str(tmp_path / "merged")], capture_output=True,
                          text=True, check=True)
    assert "merged model written" in done.stdout + done.stderr
    assert "torch_dtype" not in done.stdout + done.stderr, done.stderr


def test_ties_keeps_per_unit_weights_and_the_header_reports_the_chosen_candidate(scored_pair):
    """mergekit's TIES divides by the agreeing experts' summed weights by default, which would
    make a unit only one expert touches come out at weight 1 whatever the strategy said."""
    import torch

    from mechmerge.merge.engine import merge_in_memory
    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.recipe.build import RecipeOptions, make_recipe

    d, scores = scored_pair
    opts = dict(scores=str(scores), out="", strategy="topk", param={"k": "1", "background": "0.25", "scale": "0.5"},
                method="ties", method_param={"density": "1.0"}, calibrate=False, progress=False)
    r = make_recipe(RecipeOptions(**opts), write=False)
    assert r.config["parameters"]["normalize"] is False
    base, a = Checkpoint.open(str(d / "base")), Checkpoint.open(str(d / "a"))
    unit = "model.layers.0.self_attn.v_proj"  # planted in a only: b leaves it at the base
    w = r.weights[r.experts.index("a"), r.units.index(unit)]
    assert w in (0.5, 0.125)
    name = f"{unit}.weight"
    merged = merge_in_memory(r.config)[name]
    torch.testing.assert_close(merged, base.get(name) + w * (a.get(name) - base.get(name)))
    # asked for, mergekit's normalisation is kept (and then the weight cancels out)
    r = make_recipe(RecipeOptions(**{**opts, "method_param": {"density": "1.0", "normalize": "true"}}), write=False)
    torch.testing.assert_close(merge_in_memory(r.config)[name], a.get(name))

    # calibrated: the header reports the candidate the calibration chose (by its full rank key)
    r = make_recipe(RecipeOptions(scores=str(scores), out="", strategy="mix", calibrate=True, progress=False),
                    write=False)
    chosen = [row for row in r.calibration if row.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["params"] == r.params
    assert f"sequence_accuracy {chosen[0]['objective']:.4f}" in r.text


def test_random_methods_record_their_seed_and_merge_reproducibly(scored_pair, tmp_path):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--strategy", "topk", "--method", "dare_ties",
                   "--method-param", "density=0.5", "--seed", "7") == 0
    assert "random seed: 7" in recipe.read_text()
    outs = []
    for i in range(2):
        outs.append(tmp_path / f"m{i}")
        assert run_cli("merge", str(recipe), "--out", str(outs[-1])) == 0
    one, two = _tensors(outs[0]), _tensors(outs[1])
    assert all(torch.equal(one[k], two[k]) for k in one)  # the header's seed, not a fresh draw each time
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m9"), "--seed", "8") == 0
    other = _tensors(tmp_path / "m9")
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_card_ranks_by_the_score_that_drove_the_weights(scored_pair, tmp_path):
    """--score mean is not stored in the scores file: the card computes it; a control is said to be one."""
    from mechmerge.merge.card import render_card
    from mechmerge.recipe.build import RecipeOptions, make_recipe

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    for key, column in (("mean", "| unit | mean |"), ("random", "driven by the `random` control")):
        r = make_recipe(RecipeOptions(scores=str(scores), out="", strategy="share", score=key, calibrate=False,
                                      progress=False), write=False)
        card = render_card("m", r.text, r.config, data)
        assert column in card and "`model.layers.1.mlp.down_proj`" in card, card
        row = next(line for line in card.splitlines() if line.startswith("| `model.layers.1.mlp.down_proj`"))
        assert row.rstrip(" |").split("|")[-1].strip() != ""  # the merge weight is shown


def test_a_16_bit_base_gives_a_16_bit_merge(scored_pair, tmp_path):
    """The arithmetic runs in float32 (the recipe's dtype); the model is written in the base's."""
    d, scores = scored_pair
    for m in ("base", "a", "b"):
        shutil.copytree(d / m, tmp_path / m)
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16"}))
    data = json.loads(scores.read_text())
    data["base"] = str(tmp_path / "base")
    for m in ("a", "b"):
        data["experts"][m]["model"] = str(tmp_path / m)
    moved = tmp_path / "scores.json"
    moved.write_text(json.dumps(data))
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(moved), "--out", str(recipe), "--no-calibrate") == 0
    r = yaml.safe_load(recipe.read_text())
    assert r["dtype"] == "float32" and r["out_dtype"] == "bfloat16"
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m")) == 0
    assert {t.dtype for t in _tensors(tmp_path / "m").values()} == {torch.bfloat16}


def test_the_card_carries_the_evaluation_it_is_given(scored_pair, tmp_path):
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--no-calibrate") == 0
    ev = {"model": "m", "tasks": {"a": {"accuracy": 0.625, "logprob": -1.25, "n": 8,
                                         "quartiles": {"Q1": 0.5, "Q2": None, "Q3": 1.0, "Q4": 0.5}}}}
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m"), "--eval", str(tmp_path / "ev.json")) == 0
    card = (tmp_path / "m" / "README.md").read_text()
    assert "## Evaluation" in card and "| a | 0.625 | -1.2500 | 8 | 0.500 | – | 1.000 | 0.500 |" in card


def test_a_scores_file_changed_since_the_recipe_is_not_used_for_the_card(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    mine = tmp_path / "scores.json"
    shutil.copyfile(scores, mine)
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(mine), "--out", str(recipe), "--no-calibrate") == 0
    data = json.loads(mine.read_text())
    data["experts"]["a"]["modules"]["model.layers.1.mlp.down_proj"]["patch_in"] = 0.0
    mine.write_text(json.dumps(data))
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "m")) == 2
    assert "changed since the recipe was written" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_relative_model_paths_merge_offline(tmp_path, monkeypatch):
    """Scoring with relative paths writes `dir/sub` model paths into the recipe; mergekit's own
    card asked the Hub whether such a path is a repository, which failed offline after the
    whole merge and threw it away."""
    zoo = tmp_path / "zoo"
    shutil.copytree(Path(__file__).parents[2] / "mechmerge" / "zoo" / "data" / "alpha", zoo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_method: task_arithmetic\nbase_model: zoo/base\ndtype: float32\n"
                      "models:\n  - model: zoo/experts/rev\n    parameters: {weight: 1.0}\n")
    assert run_cli("merge", str(recipe), "--out", "merged") == 0
    assert (tmp_path / "merged" / "README.md").read_text().count("mechmerge") > 0
    assert (tmp_path / "merged" / "mergekit_config.yml").read_text() == recipe.read_text()  # the record


def test_a_random_method_without_a_seed_is_warned_about(tmp_path, monkeypatch, capsys):
    zoo = Path(__file__).parents[2] / "mechmerge" / "zoo" / "data" / "alpha"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: dare_ties\nbase_model: {zoo / 'base'}\ndtype: float32\nmodels:\n"
                      f"  - model: {zoo / 'experts' / 'rev'}\n    parameters: {{weight: 1.0, density: 0.5}}\n")
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "a")) == 0
    assert "differs from run to run; pass --seed" in capsys.readouterr().err
    assert run_cli("merge", str(recipe), "--out", str(tmp_path / "b"), "--seed", "3") == 0
    assert "--seed" not in capsys.readouterr().err


def test_publish_eval_puts_a_later_evaluation_on_the_card(scored_pair, tmp_path, monkeypatch, capsys):
    """merge, then eval, then `publish --eval`: the uploaded card is the one `merge --eval` writes."""
    d, scores = scored_pair
    recipe = tmp_path / "r.yaml"
    assert run_cli("recipe", str(scores), "--out", str(recipe), "--no-progress") == 0
    plain, carded = tmp_path / "a" / "merged", tmp_path / "b" / "merged"  # same name: the card's title
    assert run_cli("merge", str(recipe), "--out", str(plain)) == 0
    ev = tmp_path / "eval.json"
    assert run_cli("eval", str(plain), "--probes", f"a={d / 'a.jsonl'}", "--json", str(ev), "--no-progress") == 0
    assert run_cli("merge", str(recipe), "--out", str(carded), "--eval", str(ev)) == 0
    before = (plain / "README.md").read_text()
    assert before != (carded / "README.md").read_text()
    assert run_cli("publish", str(plain), "--repo", "me/m", "--dry-run", "--eval", str(ev)) == 0
    assert (plain / "README.md").read_text() == before  # a dry run changes nothing
    sent = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    from mechmerge.merge import publish

    class FakeHub:
        def create_repo(self, **kw):
            pass

        def upload_folder(self, folder_path, **kw):
            sent.append((Path(folder_path) / "README.md").read_text())

    monkeypatch.setattr(publish, "make_api", lambda: FakeHub())
    assert run_cli("publish", str(plain), "--repo", "me/m", "--eval", str(ev)) == 0
    assert sent == [(carded / "README.md").read_text()]
    monkeypatch.chdir(tmp_path / "a")  # the card is not re-rendered, so nothing resolves differently
    assert run_cli("publish", "merged", "--repo", "me/m", "--eval", str(ev)) == 0  # replaced, not added twice
    assert sent[1] == sent[0]
    assert run_cli("publish", str(plain), "--repo", "me/m", "--eval", str(recipe)) == 2
