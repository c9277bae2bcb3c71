"""load_model streams safetensors into a weightless model: same model as from_pretrained,
without the mapped-file pages that made loading cost two models' worth of memory."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import make_model
from mechmerge.errors import UserError
from mechmerge.models import load as load_mod
from mechmerge.models.checkpoint import Checkpoint


def reference(path, dtype=torch.float32):
    """HF's own load, with the attention implementation mechmerge picks for the family."""
    from transformers import AutoModelForCausalLM

    attn = Checkpoint.open(str(path)).family.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                attn_implementation=attn).eval()


def assert_same_model(a, b) -> None:
    a.eval(), b.eval()  # GPT-2 has dropout
    sa, sb = dict(a.named_parameters(remove_duplicate=False)), dict(b.named_parameters(remove_duplicate=False))
    assert sa.keys() == sb.keys()
    for n in sa:
        assert sa[n].dtype == sb[n].dtype and torch.equal(sa[n], sb[n]), n
    assert a.config._attn_implementation == b.config._attn_implementation
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys()
    for n in ba:
        assert torch.equal(ba[n], bb[n]), n
    ids = torch.randint(3, 60, (2, 12))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_streamed_equals_from_pretrained(family_base):
    fam, path = family_base
    ck = Checkpoint.open(str(path))
    streamed = load_mod._stream(ck, torch.device("cpu"), torch.float32, False)
    assert streamed is not None, "a save_pretrained checkpoint must take the streaming path"
    assert_same_model(streamed, reference(path))
    # nothing left on the meta device, and the public entry point returns the same
    model = load_mod.load_model(ck, torch.device("cpu"), torch.float32)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert_same_model(model, streamed)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_tied_embeddings_stay_tied(tmp_path, family):
    path = make_model(family, tmp_path / "m", seed=3, tie=True)
    ck = Checkpoint.open(str(path))
    model = load_mod._stream(ck, torch.device("cpu"), torch.float32, False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_model(model, reference(path))


def test_bfloat16_checkpoint_cast_like_from_pretrained(tmp_path):
    path = make_model("qwen2", tmp_path / "m", seed=4)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    (tmp_path / "bf16").joinpath("tokenizer.json").write_text((path / "tokenizer.json").read_text())
    ck = Checkpoint.open(str(tmp_path / "bf16"))
    assert_same_model(load_mod._stream(ck, torch.device("cpu"), torch.float32, False),
                      reference(tmp_path / "bf16", torch.float32))


def test_renamed_keys_fall_back_to_from_pretrained(tmp_path):
    """A checkpoint whose names are not the parameters' (legacy prefixes) is not streamed."""
    from safetensors.torch import load_file, save_file

    path = make_model("gpt2", tmp_path / "m", seed=5)
    state = load_file(path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in state.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    ck = Checkpoint.open(str(path))
    assert load_mod._stream(ck, torch.device("cpu"), torch.float32, False) is None


def test_reads_do_not_map_the_file(tmp_path):
    """Checkpoint.get leaves no mapping of the file behind (mapped pages count as resident)."""
    path = make_model("llama", tmp_path / "m", seed=6)
    ck = Checkpoint.open(str(path))
    tensors = [ck.get(n) for n in ck.tensors]
    maps = open("/proc/self/maps").read() if __import__("os").path.exists("/proc/self/maps") else ""
    assert str(path / "model.safetensors") not in maps
    from safetensors.torch import load_file

    ref = load_file(path / "model.safetensors")
    for n, t in zip(ck.tensors, tensors):
        assert torch.equal(t, ref[n]), n


def test_byte_range_that_does_not_fit_shape_is_refused(tmp_path):
    path = make_model("llama", tmp_path / "m", seed=7)
    f = path / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] + 1] + header[name]["shape"][1:]
    new = json.dumps(header).encode()  # offsets are relative to the data: a new length is fine
    f.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    with pytest.raises(UserError, match="does not fit shape"):
        Checkpoint.open(str(path))


def test_a_tied_config_with_a_different_stored_head_is_not_tied_blindly(tmp_path):
    """tie_word_embeddings set, yet the file holds an lm_head unlike the embeddings: streaming
    would tie them and drop the head; it leaves the model to from_pretrained instead."""
    from safetensors.torch import load_file, save_file

    path = make_model("llama", tmp_path / "m", seed=3, tie=True)
    f = path / "model.safetensors"
    sd = load_file(str(f))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1.0
    save_file(sd, str(f), metadata={"format": "pt"})
    assert load_mod._stream(Checkpoint.open(str(path)), torch.device("cpu"), torch.float32, False) is None


def test_weights_of_another_shape_than_the_config_builds_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_model("llama", tmp_path / "m", seed=3)
    f = path / "model.safetensors"
    sd = load_file(str(f))
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"][:-8]
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(UserError, match="model.layers.0.mlp.up_proj.weight' has shape .* do not belong together"):
        load_mod._stream(Checkpoint.open(str(path)), torch.device("cpu"), torch.float32, False)
