"""--device-map: a base spread by accelerate scores like a base on one device."""

import pytest

from mechmerge.errors import UserError
from mechmerge.patching.score import ScoreOptions, score


def _opts(base, expert, probes, out, **kw):
    return ScoreOptions(base=str(base), experts={"x": str(expert)}, probes={"x": str(probes)}, out=str(out),
                        progress=False, device="cpu", **kw)


@pytest.mark.parametrize("method", ["exact", "hybrid"])
def test_device_map_gives_the_same_scores(planted, probes_file, tmp_path, method):
    """On this CPU-only machine accelerate places every block on the CPU and attaches no hooks: this
    covers the load through from_pretrained with a device_map; the next-but-one test, the hooks."""
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


def test_a_dispatched_model_stays_where_accelerate_put_it(tmp_path):
    """load_model used to call model.to(device) after a device_map load, gathering the blocks
    on one device (on GPUs: cuda:0 for the whole model, behind hooks that still route to cuda:k)."""
    import torch

    from helpers import make_model
    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import load_model

    ck = Checkpoint.open(str(make_model("llama", tmp_path / "m", seed=1)))
    model = load_model(ck, torch.device("meta"), torch.float32, device_map={"": "cpu"})
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_scores_through_accelerate_hooks_match(planted, probes_file, tmp_path, monkeypatch):
    """On a CPU-only machine from_pretrained(device_map="auto") attaches no hooks; dispatch the
    blocks by hand with forced hooks, as a multi-GPU map would, and score through them."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    fam, base, expert, units = planted
    score(_opts(base, expert, probes_file, tmp_path / "a.json", method="exact"))
    original = AutoModelForCausalLM.from_pretrained.__func__
    hooked = []

    def from_pretrained(cls, *a, device_map=None, **kw):
        model = original(cls, *a, **kw)
        hooked.append(model)
        return dispatch_model(model, device_map={"": "cpu"}, force_hooks=True)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    score(_opts(base, expert, probes_file, tmp_path / "b.json", method="exact", device_map="auto"))
    assert hooked and any(hasattr(m, "_hf_hook") for m in hooked[0].modules())
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
