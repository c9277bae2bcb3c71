"""A miniature zoo built end to end: layout, manifest, determinism, the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mechmerge.cli import main
from mechmerge.cli.zoo import ZooOptions, table
from mechmerge.errors import UserError
from mechmerge.probes import load_probes
from mechmerge.zoo import base, checkpoints, experts, locate, manifest, probe_files
from mechmerge.zoo import build as zb

MINI = dict(specialists=("rev", "add"), base_steps=6, expert_steps=8, batch_size=8, probes=(2, 3, 4),
            model=zb.ModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               max_position_embeddings=32))


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return zb.build_zoo("alpha", tmp_path_factory.mktemp("zoo") / "mini", **MINI)


def tensors(model_dir):
    return load_file(model_dir / "model.safetensors")


def test_layout_and_manifest(mini):
    m = manifest(mini)
    assert m["name"] == "alpha" and m["specialists"] == ["rev", "add"] and m["general"] == ["copy", "twice"]
    assert (base(mini) / "config.json").is_file() and (base(mini) / "tokenizer.json").is_file()
    assert set(experts(mini)) == {"rev", "add"}
    assert list(checkpoints(mini)) == ["rev"] and list(checkpoints(mini)["rev"]) == [2, 4, 6]
    for split, n in zip(zb.SPLITS, MINI["probes"]):
        files = probe_files(mini, split)
        assert set(files) == {"copy", "twice", "rev", "add"}
        for f in files.values():
            assert len(load_probes(f)) == n
    assert set(m["accuracy"]["base"]) == set(m["skills"])
    assert set(m["accuracy"]["experts"]) == {"rev", "add"}
    assert all(0 <= a <= 1 for a in m["accuracy"]["base"].values())
    longest = max(len(p.response) for split in zb.SPLITS for f in probe_files(mini, split).values()
                  for p in load_probes(f))
    assert m["max_new_tokens"] == longest + 4
    cfg = json.loads((base(mini) / "config.json").read_text())
    assert cfg["hidden_size"] == 16 and cfg["tie_word_embeddings"] is False and cfg["num_key_value_heads"] == 2
    assert "lm_head.weight" in tensors(base(mini))
    assert not list(mini.parent.glob(".*partial"))


def test_experts_moved_and_checkpoints_lie_between(mini):
    b = tensors(base(mini))
    e = tensors(experts(mini)["rev"])
    steps = checkpoints(mini)["rev"]
    assert all(t.dtype == torch.float32 for t in e.values())
    # distance from the base grows along the fine-tuning trajectory
    dist = [sum((tensors(d)[k] - b[k]).norm() ** 2 for k in b) for d in steps.values()]
    dist.append(sum((e[k] - b[k]).norm() ** 2 for k in b))
    assert 0 < dist[0] and dist == sorted(dist)


def test_build_is_deterministic(mini, tmp_path):
    again = zb.build_zoo("alpha", tmp_path / "again", **MINI)
    for rel in ["base", "experts/rev", "experts/add", "checkpoints/rev/step-4"]:
        x, y = tensors(mini / rel), tensors(again / rel)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), rel
    for f in (mini / "probes").iterdir():
        assert f.read_bytes() == (again / "probes" / f.name).read_bytes()
    a, b = manifest(mini), manifest(again)
    assert a["accuracy"] == b["accuracy"] and a["final_loss"] == b["final_loss"]


def test_another_seed_gives_other_probes_and_weights(mini, tmp_path):
    other = zb.build_zoo("alpha", tmp_path / "other", seed=5, **MINI)
    assert manifest(other)["seed"] == 5
    assert (other / "probes/rev.test.jsonl").read_text() != (mini / "probes/rev.test.jsonl").read_text()
    assert not torch.equal(tensors(other / "base")["lm_head.weight"], tensors(mini / "base")["lm_head.weight"])


def test_refuses_bad_specs_and_existing_output(mini):
    with pytest.raises(UserError, match="did you mean 'expert_steps'"):
        zb.zoo_spec("alpha", expert_step=3)
    with pytest.raises(UserError, match="general skill"):
        zb.zoo_spec("alpha", specialists=("copy",))
    with pytest.raises(UserError, match="unknown zoo 'gamma'"):
        zb.zoo_spec("gamma")
    with pytest.raises(UserError, match="--force"):
        zb.build_zoo("alpha", mini, **MINI)


def test_locate_builds_into_the_cache_then_the_cli_rebuilds(tmp_path, monkeypatch, capsys):
    from typing import get_args, get_type_hints

    assert set(get_args(get_type_hints(ZooOptions)["name"])) == set(zb.ZOOS)
    monkeypatch.setenv("MECHMERGE_CACHE", str(tmp_path))
    monkeypatch.setitem(zb.ZOOS, "beta", zb.zoo_spec("beta", **{**MINI, "specialists": ("swap", "count")}))
    path = locate("beta")
    assert path == tmp_path / "zoo" / "beta" and "building it" in capsys.readouterr().err
    assert locate("beta") == path and capsys.readouterr().err == ""
    assert set(experts("beta")) == {"swap", "count"}

    with pytest.raises(SystemExit) as e:
        main(["zoo", "--name", "beta", "--no-progress"])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["zoo", "--name", "beta", "--no-progress", "--force", "--seed", "3"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "zoo beta (seed 3)" in out and "keeps twice" in out
    assert out.splitlines()[-1].endswith(str(path)) and manifest(path)["seed"] == 3
    assert [ln.split()[0] for ln in out.splitlines()[2:6]] == ["copy", "twice", "swap", "count"]
    assert table(manifest(path)) in out


def test_help_lists_each_zoo_and_its_skills():
    from click.testing import CliRunner

    from mechmerge.cli.zoo import zoo

    out = CliRunner().invoke(zoo, ["--help"]).output
    for spec in zb.ZOOS.values():
        assert any(ln.strip().startswith(spec.name) and ln.endswith(", ".join(spec.specialists))
                   for ln in out.splitlines()), spec.name
        assert " and ".join(spec.general) in out
