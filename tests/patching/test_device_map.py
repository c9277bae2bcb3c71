"""--device-map: a base spread by accelerate scores like a base on one device."""

import pytest

from mechmerge.errors import UserError
from mechmerge.patching.score import ScoreOptions, score


def _opts(base, expert, probes, out, **kw):
    return ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes)}, out=str(out),
                        progress=False, device="cpu", **kw)


@pytest.mark.parametrize("method", ["exact", "hybrid"])
def test_device_map_gives_the_same_scores(planted, probes_file, tmp_path, method):
    """On this CPU-only machine accelerate places every block on the CPU; the load goes through
    from_pretrained with a device_map and the runner through accelerate's hooks."""
    fam, base, expert, units = planted
    plain = score(_opts(base, expert, probes_file, tmp_path / "a.json", method=method, top_k=3))
    mapped = score(_opts(base, expert, probes_file, tmp_path / "b.json", method=method, top_k=3, device_map="auto"))
    assert mapped["experts"] == plain["experts"]
    # the scores file does not depend on where the model was placed
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_offloaded_weights_are_refused(tmp_path):
    """accelerate leaves offloaded parameters on the meta device; patching could not write them."""
    import torch

    from helpers import make_model
    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import load_model

    ck = Checkpoint.open(str(make_model("llama", tmp_path / "m", seed=1)))
    where = {n: "cpu" for n in ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head",
                                "model.rotary_emb")}
    where["model.layers.2"] = "meta"  # what an offloaded block looks like from the module's side
    with pytest.raises(UserError, match="offloaded part of it"):
        load_model(ck, torch.device("cpu"), torch.float32, device_map=where)


def test_bad_device_map_is_refused(planted, probes_file, tmp_path):
    fam, base, expert, units = planted
    with pytest.raises(UserError, match="--device-map 'everywhere' is not one of auto"):
        score(_opts(base, expert, probes_file, tmp_path / "s.json", device_map="everywhere"))
    assert not (tmp_path / "s.json").exists()


def test_device_map_with_a_launcher_is_refused(planted, probes_file, tmp_path, monkeypatch):
    fam, base, expert, units = planted
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="cannot be combined with a multi-process launch"):
        _opts(base, expert, probes_file, tmp_path / "s.json", device_map="auto").validate()
