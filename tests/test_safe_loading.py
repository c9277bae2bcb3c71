"""Checkpoints never run code: safetensors by default, pickle only on request and then
with weights_only=True."""

import os
import pickle
import shutil

import pytest
import torch
from helpers import make_model, noisy_expert, write_probes
from safetensors.torch import load_file

from mechmerge.cli import main


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mechmerge-pwned",))


@pytest.fixture()
def models(tmp_path):
    base = make_model("llama", tmp_path / "base", layers=2)
    exp = noisy_expert(base, tmp_path / "e", seed=1)
    probes = write_probes(tmp_path / "p.jsonl", [("rev ab=", "ba")])
    return tmp_path, base, exp, probes


def _pickle_only(d):
    sd = load_file(str(d / "model.safetensors"))
    torch.save(sd, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


def test_pickle_needs_the_flag_and_then_loads(models, capsys):
    d, base, exp, probes = models
    _pickle_only(exp)
    args = ["score", "--base", str(base), "--expert", f"x={exp}", "--probes", f"x={probes}", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(d / "a.json")])
    assert e.value.code == 2 and "--allow-pickle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(d / "b.json"), "--allow-pickle"])
    assert e.value.code == 0 and (d / "b.json").exists()


def test_a_malicious_pickle_is_refused_not_run(models, capsys):
    d, base, exp, probes = models
    marker = "/tmp/mechmerge-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    (exp / "model.safetensors").unlink()
    with open(exp / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": Exploit()}, f)
    with pytest.raises(SystemExit) as e:
        main(["score", "--base", str(base), "--expert", f"x={exp}", "--probes", f"x={probes}", "--no-progress",
              "--out", str(d / "c.json"), "--allow-pickle"])
    assert e.value.code == 2
    assert "weights_only" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_remote_code_is_not_trusted_by_default(models, capsys):
    d, base, exp, probes = models
    custom = d / "custom"
    shutil.copytree(exp, custom)
    cfg = (custom / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "evil_remote"')
    (custom / "config.json").write_text(cfg)
    with pytest.raises(SystemExit) as e:
        main(["score", "--base", str(base), "--expert", f"x={custom}", "--probes", f"x={probes}", "--no-progress",
              "--out", str(d / "d.json")])
    assert e.value.code == 2 and "not supported" in capsys.readouterr().err
