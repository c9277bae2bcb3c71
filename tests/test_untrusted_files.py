"""Files from elsewhere (scores, probes, GGUF, suites) are data, never permission.

A scores file is copied into every merged model and uploaded with it, so a downloaded one
must not grant remote code or pickle loading, name folders outside the output, or be
applied to a base it was not measured on. Broken inputs get a one-line refusal (exit 2),
not a traceback.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from helpers import make_model, tiny_config

from mechmerge.cli import main
from mechmerge.errors import UserError

ZOO = Path(__file__).parent.parent / "mechmerge" / "zoo" / "data" / "alpha"


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def scores_with(scored_pair, path: Path, **changes) -> Path:
    """The pair's scores file with top-level fields replaced, written to `path`."""
    d, scores = scored_pair
    data = {**json.loads(scores.read_text()), **changes}
    path.write_text(json.dumps(data))
    return path


# -- 1. permissions are never read from a scores file ------------------------------------------

def _evil_base(src: str, dst: Path, marker: Path) -> Path:
    """A copy of `src` whose config.json names a Python file that writes `marker` when imported."""
    shutil.copytree(src, dst)
    (dst / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_conflict_takes_remote_code_permission_from_the_command_line_only(scored_pair, tmp_path, capsys,
                                                                          monkeypatch):
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    monkeypatch.setattr(sys, "path", list(sys.path))  # ... and puts on the path
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    marker = tmp_path / "marker"
    base = _evil_base(data["base"], tmp_path / f"evil_{tmp_path.name}", marker)
    s = scores_with(scored_pair, tmp_path / "s.json", base=str(base),
                    options={**data["options"], "trust_remote_code": True, "allow_pickle": True})
    try:
        code, err = run(["conflict", s, "--device", "cpu", "--top-k", "2"], capsys)
    except AttributeError as e:  # evil.py has no config class: it ran
        code, err = 1, str(e)
    assert not marker.exists(), "the scores file's trust_remote_code ran the base's code"
    assert code == 0, err
    # the control: the permission given on the command line runs that code, so the file could have
    with pytest.raises(AttributeError, match="EvilConfig"):  # it ran, then found no config class
        main(["conflict", str(s), "--device", "cpu", "--top-k", "2", "--trust-remote-code"])
    assert marker.exists()


def test_from_record_ignores_recorded_permissions(scored_pair):
    from mechmerge.patching.score import ScoreOptions

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    data["options"].update(trust_remote_code=True, allow_pickle=True, check_finite=False, force=True, resume=True,
                           device="cuda:7", device_map="auto", batch_size=3)
    o = ScoreOptions.from_record(data)
    assert (o.trust_remote_code, o.allow_pickle, o.check_finite, o.force, o.resume) == (False, False, True, False,
                                                                                         False)
    assert (o.device, o.device_map, o.batch_size) == ("auto", None, 3)  # measurement settings still come along
    o = ScoreOptions.from_record(data, trust_remote_code=True, allow_pickle=True)  # the caller's grant
    assert o.trust_remote_code and o.allow_pickle


# -- 2. expert names are plain folder names ---------------------------------------------------

BAD_NAMES = ["../../victim", "a/b", "a\\b", "..", "x..y", "nul\0", ".hidden", ""]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_scores_with_a_path_for_an_expert_name_are_refused(scored_pair, name):
    from mechmerge.scores import validate_scores

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    data["experts"] = {name: data["experts"]["a"]}
    with pytest.raises(UserError, match="not a plain folder name"):
        validate_scores(data, "s.json")


def test_plain_expert_names_pass(scored_pair):
    from mechmerge.scores import validate_scores

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    data["experts"] = {n: data["experts"]["a"] for n in ("rev", "my-expert_1", "v1.2", "añadir")}
    validate_scores(data, "s.json")


def _head_scores(scored_pair, path: Path, name: str) -> Path:
    """Head-granularity scores for the pair's base (made up numbers), one expert called `name`."""
    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import param_order
    from mechmerge.models.units import discover_units

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    base = Checkpoint.open(data["base"])
    units = discover_units(param_order(base), base.family, base.num_layers, "head", base.config)

    def numel(s):
        shape = list(base.tensors[s.tensor].shape)
        if s.dim is not None:
            shape[s.dim] = s.stop - s.start
        return math.prod(shape)

    recs = {u.name: {"layer": u.layer, "kind": u.kind, "category": u.category,
                     "params": sum(numel(s) for s in u.slices)} for u in units}
    expert = {**data["experts"]["a"], "modules": {u: {"patch_in": 0.5, "knockout": 0.5, "anchor": None,
                                                      "identical": False, "method": "exact"} for u in recs}}
    return scores_with(scored_pair, path, granularity="head", units=recs, experts={name: expert})


def test_head_recipe_writes_nothing_outside_the_derive_dir(scored_pair, tmp_path, capsys):
    s = _head_scores(scored_pair, tmp_path / "heads.json", "../../victim")
    derive = tmp_path / "a" / "b" / "derived"
    code, err = run(["recipe", s, "--out", tmp_path / "r.yaml", "--strategy", "uniform", "--derive-dir", derive],
                    capsys)
    assert code == 2 and "'../../victim' is not a plain folder name" in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "r.yaml").exists()


def test_head_recipe_with_a_plain_name_still_works(scored_pair, tmp_path, capsys):
    s = _head_scores(scored_pair, tmp_path / "heads.json", "rev")
    derive = tmp_path / "derived"
    code, err = run(["recipe", s, "--out", tmp_path / "r.yaml", "--strategy", "uniform", "--derive-dir", derive],
                    capsys)
    assert code == 0, err
    assert (derive / "rev" / "model.safetensors").is_file() and [p.name for p in derive.iterdir()] == ["rev"]


def test_score_refuses_a_path_as_an_expert_name(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    out = tmp_path / "s.json"
    code, err = run(["score", "--base", data["base"], "--expert", f"../x={d / 'a'}", "--probes",
                     f"../x={d / 'a.jsonl'}", "--out", out, "--no-progress"], capsys)
    assert code == 2 and "not a plain folder name" in err and "Traceback" not in err, err
    assert not out.exists()


# -- 3. scores from another base are refused before any work ---------------------------------

@pytest.fixture(scope="module")
def other_bases(tmp_path_factory):
    """The zoo's base (4 layers, hidden 64) and its experts, and a base with the pair's unit names
    but other sizes (3 layers, MLP width 48 instead of 64)."""
    import transformers

    d = tmp_path_factory.mktemp("other")
    zoo = d / "zoo"
    for part in ("base", "experts/rev", "experts/add"):
        shutil.copytree(ZOO / part, zoo / part)
    cfg = tiny_config("llama")
    cfg.intermediate_size = 48
    narrow = d / "narrow"
    make_model("llama", d / "tmp")  # the tokenizer
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(narrow)
    for f in (d / "tmp").iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, narrow / f.name)
    return zoo, narrow


def _other_scores(scored_pair, other_bases, tmp_path, which: str) -> Path:
    zoo, narrow = other_bases
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    if which == "zoo":  # base and experts of the zoo: everything runs, on units the scores never measured
        experts = {"a": {**data["experts"]["a"], "model": str(zoo / "experts/rev")},
                   "b": {**data["experts"]["b"], "model": str(zoo / "experts/add")}}
        return scores_with(scored_pair, tmp_path / "s.json", base=str(zoo / "base"), experts=experts)
    return scores_with(scored_pair, tmp_path / "s.json", base=str(narrow))


CASES = {
    "zoo": "unit 28 is 'model.norm' in the scores but 'model.layers.3.self_attn.q_proj' in the base",
    "narrow": "unit 'model.layers.0.mlp.gate_proj' has params 2048 in the scores but 1536 in the base",
}


@pytest.mark.parametrize("which", list(CASES))
def test_recipe_refuses_scores_of_another_base(scored_pair, other_bases, tmp_path, capsys, which):
    s = _other_scores(scored_pair, other_bases, tmp_path, which)
    out = tmp_path / "r.yaml"
    code, err = run(["recipe", s, "--out", out, "--no-calibrate"], capsys)
    assert code == 2 and CASES[which] in err and "measured on another model" in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("which", list(CASES))
def test_conflict_refuses_scores_of_another_base(scored_pair, other_bases, tmp_path, capsys, which):
    s = _other_scores(scored_pair, other_bases, tmp_path, which)
    out = tmp_path / "c.json"
    code, err = run(["conflict", s, "--out", out, "--no-causal"], capsys)
    assert code == 2 and CASES[which] in err and "Traceback" not in err, err
    assert not out.exists()


def test_scores_recorded_units_are_what_the_check_computes(scored_pair):
    """The check recomputes `units` exactly as `score` records them (or every recipe would fail)."""
    from mechmerge.recipe.build import scored_units

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    base, units = scored_units(data)
    assert [u.name for u in units] == list(data["units"])


# -- 4. broken inputs: a refusal, not a traceback ---------------------------------------------

def test_probes_that_are_not_utf8(scored_pair, tmp_path, capsys):
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"prompt": "rev ab=", "response": "ba"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    out = tmp_path / "s.json"
    code, err = run(["score", "--base", data["base"], "--expert", f"a={d / 'a'}", "--probes", f"a={p}",
                     "--out", out, "--no-progress"], capsys)
    assert code == 2 and f"{p}:2: not UTF-8 text (byte 0xe9 at column 16)" in err and "Traceback" not in err, err
    assert not out.exists()


def _gguf(path: Path, tweak=None) -> Path:
    """A header-only llama GGUF (one tensor, no tokenizer); `tweak(writer)` adds fields."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("t")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(4)
    if tweak is not None:
        tweak(w)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("case, tweak, fragment", [
    ("split", lambda w: w.add_string("split.count", "two"), "GGUF field split.count is 'two', expected an integer"),
    ("experts", lambda w: w.add_string("llama.expert_count", "4x"),
     "GGUF field llama.expert_count is '4x', expected an integer"),
    ("eot", lambda w: w.add_string("tokenizer.ggml.eot_token_id", "<eot>"), "tokenizer.ggml.eot_token_id"),
    ("no tokenizer", None, "transformers cannot build a tokenizer from this GGUF"),
])
def test_gguf_fields_that_are_not_what_they_say(tmp_path, capsys, case, tweak, fragment):
    f = _gguf(tmp_path / "t.gguf", tweak)
    out = tmp_path / "o"
    code, err = run(["import-gguf", f, "--out", out], capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("metric, fragment", [
    ("math:pi", "metric 'math:pi' is a float, not a function"),
    (":exact", "expected package.module:function"),
    ("math:", "expected package.module:function"),
])
def test_a_metric_that_is_not_a_function_is_refused_before_evaluating(scored_pair, tmp_path, capsys, monkeypatch,
                                                                     metric, fragment):
    import mechmerge.evaluate.run as ev

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the metric was checked")

    monkeypatch.setattr(ev, "load_model", no_load)
    d, scores = scored_pair
    data = json.loads(scores.read_text())
    out = tmp_path / "e.json"
    code, err = run(["eval", data["base"], "--probes", f"t={d / 'a.jsonl'}", "--metric", f"t={metric}",
                     "--json", out, "--device", "cpu"], capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_metric_function_still_works():
    from mechmerge.evaluate.metrics import METRICS

    assert METRICS.get("mechmerge.evaluate.metrics:prefix")("abc", type("P", (), {"response": "ab"})())
