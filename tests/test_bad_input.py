"""Bad input: a one-line message naming the problem, exit status 2, no traceback, nothing written.

Each case builds its broken input in a fresh folder, runs the CLI in-process, and checks
the message, the status, and that the output path does not exist afterwards. The
architecture cases also check that no model was loaded (the problem is found before
any forward pass).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_model, noisy_expert, write_probes
from safetensors.torch import load_file, save_file

from mechmerge.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    base = make_model("llama", d / "base", seed=1, layers=2)
    expert = noisy_expert(base, d / "expert", seed=2)
    probes = write_probes(d / "p.jsonl", [("rev ab=", "ba"), ("rev cd=", "dc")])
    return d, base, expert, probes


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    return e.value.code, err


def score_args(base, expert, probes, out, *extra):
    return ["score", "--base", base, "--expert", f"x={expert}", "--probes", f"x={probes}", "--out", out,
            "--no-progress", *extra]


def _edit_expert(src: Path, dst: Path, fn):
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    fn(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _config(src: Path, dst: Path, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _no_load(monkeypatch):
    import mechmerge.patching.score as s

    def fail(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(s, "load_model", fail)


# (case id, builder(d, base, expert, probes, tmp) -> (base, expert, probes, extra args), expected message fragment)
def _missing_tensor(sd):
    del sd["model.layers.1.mlp.up_proj.weight"]


def _bad_shape(sd):
    sd["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(32, 16)


def _nan(sd):
    sd["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")


def _inf(sd):
    sd["model.norm.weight"][3] = float("inf")


MODEL_CASES = [
    ("base missing", lambda d, b, e, p, t: (t / "nope", e, p), "not found"),
    ("expert missing", lambda d, b, e, p, t: (b, t / "nope", p), "not found"),
    ("no config.json", lambda d, b, e, p, t: (b, _rm(shutil.copytree(e, t / "e"), "config.json"), p), "config.json"),
    ("no weights", lambda d, b, e, p, t: (b, _rm(shutil.copytree(e, t / "e"), "model.safetensors"), p), "no weights"),
    ("hidden size", lambda d, b, e, p, t: (b, _config(e, t / "e", hidden_size=64), p), "hidden_size"),
    ("layer count", lambda d, b, e, p, t: (b, _config(e, t / "e", num_hidden_layers=3), p), "num_hidden_layers"),
    ("vocabulary", lambda d, b, e, p, t: (b, _config(e, t / "e", vocab_size=200), p), "vocab_size"),
    ("rope base (a long-context fine-tune)", lambda d, b, e, p, t: (
        b, _config(e, t / "e", rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}), p), "rope_parameters"),
    ("missing tensor", lambda d, b, e, p, t: (b, _edit_expert(e, t / "e", _missing_tensor), p),
     "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("tensor shape", lambda d, b, e, p, t: (b, _edit_expert(e, t / "e", _bad_shape), p),
     "'model.layers.0.self_attn.o_proj.weight' has shape [32, 16]"),
    ("nan", lambda d, b, e, p, t: (b, _edit_expert(e, t / "e", _nan), p), "contains NaN"),
    ("inf", lambda d, b, e, p, t: (b, _edit_expert(e, t / "e", _inf), p), "contains Inf"),
    ("truncated", lambda d, b, e, p, t: (b, _truncate(shutil.copytree(e, t / "e")), p), "truncated"),
    ("corrupted header", lambda d, b, e, p, t: (b, _garble(shutil.copytree(e, t / "e")), p), "not a valid safetensors"),
    ("pickle only", lambda d, b, e, p, t: (b, _to_pickle(shutil.copytree(e, t / "e")), p), "--allow-pickle"),
]


def _rm(d, name):
    (Path(d) / name).unlink()
    return d


def _truncate(d):
    f = Path(d) / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    return d


def _garble(d):
    f = Path(d) / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json at "
    f.write_bytes(bytes(data))
    return d


def _to_pickle(d):
    f = Path(d) / "model.safetensors"
    torch.save(load_file(str(f)), Path(d) / "pytorch_model.bin")
    f.unlink()
    return d


@pytest.mark.parametrize("case,build,fragment", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_models(good, tmp_path, capsys, monkeypatch, case, build, fragment):
    d, base, expert, probes = good
    b, e, p = build(d, base, expert, probes, tmp_path)
    _no_load(monkeypatch)
    out = tmp_path / "out.json"
    code, err = run(score_args(b, e, p, out), capsys)
    assert code == 2, err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists() and not Path(str(out) + ".journal").exists()


PROBE_CASES = [
    ("missing", None, "not found"),
    ("empty", "", "is empty"),
    ("malformed line", '{"prompt": "a=", "response": "b"}\n{"prompt": "x", \n', ":2: invalid JSON"),
    ("missing key", '{"prompt": "a="}\n', "missing key 'response'"),
    ("empty response", '{"prompt": "a=", "response": "  "}\n', "empty response"),
    ("not an object", '["a", "b"]\n', "expected a JSON object"),
    ("too long", json.dumps({"prompt": "a" * 200, "response": "b"}) + "\n", "longer than the model's context"),
    ("chat without assistant", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
     "last message must be the assistant"),
]


@pytest.mark.parametrize("case,content,fragment", PROBE_CASES, ids=[c[0] for c in PROBE_CASES])
def test_bad_probes(good, tmp_path, capsys, case, content, fragment):
    d, base, expert, probes = good
    p = tmp_path / "p.jsonl"
    if content is not None:
        p.write_text(content)
    out = tmp_path / "out.json"
    code, err = run(score_args(base, expert, p, out), capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists()


def test_bad_names(good, tmp_path, capsys):
    d, base, expert, probes = good
    out = tmp_path / "out.json"
    common = ["score", "--base", base, "--out", out]
    cases = [
        (["--expert", f"x={expert}", "--probes", f"x={probes}", "--probes", f"y={probes}"], "names no expert"),
        (["--expert", f"x={expert}", "--expert", f"y={expert}", "--probes", f"x={probes}"], "has no probe set"),
        (["--expert", f"x={expert}", "--expert", f"x={expert}", "--probes", f"x={probes}"], "given twice"),
        (["--expert", f"{expert}", "--probes", f"x={probes}"], "NAME=VALUE"),
        (["--expert", f"x={expert}", "--probes", f"x={probes}", "--device", "cuda"], "no CUDA GPU"),
        (["--expert", f"x={expert}", "--probes", f"x={probes}", "--granularity", "neuron"], "granularity"),
    ]
    for extra, fragment in cases:
        code, err = run(common + extra, capsys)
        assert code == 2 and fragment in err and "Traceback" not in err, (extra, err)
        assert not out.exists()


def test_outputs_that_cannot_be_written(good, tmp_path, capsys):
    d, base, expert, probes = good
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    code, err = run(score_args(base, expert, probes, existing), capsys)
    assert code == 2 and "--force" in err and existing.read_text() == "{}"
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(score_args(base, expert, probes, blocker / "out.json"), capsys)
    assert code == 2 and "not a directory" in err
    code, err = run(score_args(base, expert, probes, "/proc/mechmerge-out.json"), capsys)
    assert code == 2 and "not writable" in err


def test_debug_shows_the_traceback(good, tmp_path):
    d, base, expert, probes = good
    from mechmerge.errors import UserError

    with pytest.raises(UserError):
        main(["--debug"] + [str(a) for a in score_args(base, tmp_path / "nope", probes, tmp_path / "o.json")])


@pytest.fixture(scope="module")
def scores_file(good, tmp_path_factory):
    d, base, expert, probes = good
    out = tmp_path_factory.mktemp("sc") / "s.json"
    with pytest.raises(SystemExit):
        main([str(a) for a in score_args(base, expert, probes, out)])
    return out


def test_bad_recipes_and_scores(good, scores_file, tmp_path, capsys):
    d, base, expert, probes = good
    r = tmp_path / "r.yaml"
    cases = [
        (["recipe", scores_file, "--out", r, "--strategy", "sahre"], "did you mean 'share'"),
        (["recipe", scores_file, "--out", r, "--method", "tis"], "did you mean 'ties'"),
        (["recipe", scores_file, "--out", r, "--strategy", "share", "--param", "scael=1"], "did you mean 'scale'"),
        (["recipe", scores_file, "--out", r, "--method", "ties", "--method-param", "denisty=0.3"],
         "did you mean 'density'"),
        (["recipe", scores_file, "--out", r, "--expert", "y"], "unknown expert 'y'"),
    ]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something.else"}))
    cases.append((["recipe", other, "--out", r], "not a mechmerge scores file"))
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(scores_file.read_text()), "version": 99}))
    cases.append((["recipe", newer, "--out", r], "version 99"))
    for args, fragment in cases:
        code, err = run(args, capsys)
        assert code == 2 and fragment in err and "Traceback" not in err, (args, err)
        assert not r.exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("merge_method: [unclosed\n")
    unknown_method = tmp_path / "m.yaml"
    unknown_method.write_text(f"merge_method: tie\nbase_model: {base}\nmodels:\n  - model: {expert}\n    parameters: {{weight: 1.0}}\n")
    unknown_param = tmp_path / "p.yaml"
    unknown_param.write_text(f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {expert}\n"
                             f"    parameters: {{weight: 1.0, densty: 0.5}}\n")
    out = tmp_path / "merged"
    for recipe, fragment in [(bad_yaml, "invalid YAML at line"), (unknown_method, "did you mean 'ties'"),
                             (unknown_param, "did you mean 'density'"), (tmp_path / "none.yaml", "not found")]:
        code, err = run(["merge", recipe, "--out", out], capsys)
        assert code == 2 and fragment in err and "Traceback" not in err, (recipe, err)
        assert not out.exists()


def test_no_traceback_in_a_real_process(good, tmp_path):
    import subprocess
    import sys

    d, base, expert, probes = good
    p = subprocess.run([sys.executable, "-m", "mechmerge", *map(str, score_args(base, tmp_path / "nope", probes,
                                                                                   tmp_path / "o.json"))],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
