"""LoRA adapters of the specialists (eval/real/lora.py) on a tiny random Llama: wrapping, the
saved file, and the specialist rebuilt from it (build_weights / apply_adapters)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import lora  # noqa: E402
from helpers import tiny_config  # noqa: E402

RANK, ALPHA = 4, 8.0
PER_LAYER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def base():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama", layers=2)).eval()
    with torch.no_grad():  # norms at exactly 1 would make every layer look alike
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture
def ids(base):
    return torch.randint(0, base.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomize(model, seed=0, scale=0.05):
    """Nonzero adapters whose values float16 holds exactly (so saving loses nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, lora.LoRALinear):
                mod.lora_A.copy_(mod.lora_A.half().float())
                mod.lora_B.copy_((scale * torch.randn(mod.lora_B.shape, generator=g)).half().float())


def test_add_lora_wraps_the_decoder_linears_only_and_starts_at_the_base(base, ids):
    model = copy.deepcopy(base)
    before = logits(model, ids)
    params = lora.add_lora(model, RANK, ALPHA, seed=0)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, lora.LoRALinear)}
    assert wrapped == {f"model.layers.{i}.{p}" for i in range(2) for p in PER_LAYER}
    assert type(model.lm_head) is torch.nn.Linear and isinstance(model.model.embed_tokens, torch.nn.Embedding)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(params) == {f"{m}.lora_{x}" for m in wrapped for x in "AB"}
    assert all(p is dict(model.named_parameters())[n] for n, p in params.items())
    assert torch.equal(logits(model, ids), before)  # B = 0: exactly the base
    # A is random (else the update could never leave zero), from the seed
    a = model.model.layers[0].self_attn.q_proj.lora_A
    assert a.std() > 0
    again = copy.deepcopy(base)
    lora.add_lora(again, RANK, ALPHA, seed=0)
    assert torch.equal(again.model.layers[1].mlp.down_proj.lora_A, model.model.layers[1].mlp.down_proj.lora_A)
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(copy.deepcopy(base), 0, ALPHA, seed=0)


def test_saved_adapters_rebuild_the_wrapped_model(base, ids, tmp_path):
    model = copy.deepcopy(base)
    lora.add_lora(model, RANK, ALPHA, seed=0)
    randomize(model)
    wrapped = logits(model, ids)
    assert not torch.allclose(wrapped, logits(base, ids), atol=1e-3)  # the adapters do something
    path = tmp_path / "sub" / "a.safetensors"
    lora.save_adapters(model, RANK, ALPHA, path)
    assert [p.name for p in path.parent.iterdir()] == ["a.safetensors"]  # no .tmp left behind
    tensors, scale = lora.read_adapters(path)
    assert scale == ALPHA / RANK and all(t.dtype == torch.float16 for t in tensors.values())
    assert len(tensors) == 2 * 2 * len(PER_LAYER)

    plain = copy.deepcopy(base)
    assert lora.apply_adapters(plain, path) == 2 * len(PER_LAYER)
    torch.testing.assert_close(logits(plain, ids), wrapped, atol=1e-5, rtol=0)
    # only the adapted weights changed
    changed = {n for n, p in plain.named_parameters() if not torch.equal(p, base.get_parameter(n))}
    assert changed == {f"model.layers.{i}.{p}.weight" for i in range(2) for p in PER_LAYER}


def adapters_for(weights, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in weights.items():
        m = key.rsplit(".", 1)[0]
        out[f"{m}.lora_A"] = torch.randn(rank, w.shape[1], generator=g).half()
        out[f"{m}.lora_B"] = torch.randn(w.shape[0], rank, generator=g).half()
    return out


def test_build_weights_is_reproducible_and_is_w_plus_scaled_ba():
    g = torch.Generator().manual_seed(0)
    weights = {"l.0.q.weight": torch.randn(6, 5, generator=g), "l.0.up.weight": torch.randn(7, 6, generator=g)}
    adapters = adapters_for(weights)
    untouched = torch.randn(4, generator=g)
    scale = 0.75
    one = lora.build_weights({**weights, "l.0.norm.weight": untouched}, adapters, scale)
    two = lora.build_weights({**weights, "l.0.norm.weight": untouched}, adapters, scale)
    assert set(one) == set(weights) | {"l.0.norm.weight"} and one["l.0.norm.weight"] is untouched
    for key, w in weights.items():
        assert torch.equal(one[key], two[key]) and one[key].dtype == torch.float32
        m = key.rsplit(".", 1)[0]
        exact = w.double() + scale * adapters[f"{m}.lora_B"].double() @ adapters[f"{m}.lora_A"].double()
        # rounded once from float64: within half a float32 ulp of the exact value
        assert ((one[key].double() - exact).abs() <= exact.abs() * 2.0 ** -24).all()
        assert not torch.equal(one[key], w)


def test_build_weights_keeps_the_dtype_of_the_weight():
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    adapters = adapters_for({"m.weight": w})
    out = lora.build_weights({"m.weight": w}, adapters, 1.0)["m.weight"]
    assert out.dtype == torch.bfloat16
    exact = w.double() + adapters["m.lora_B"].double() @ adapters["m.lora_A"].double()
    assert torch.equal(out, exact.to(torch.bfloat16))


def test_build_weights_refuses_a_mismatched_or_missing_weight():
    weights = {"blk.q.weight": torch.zeros(6, 5)}
    bad = adapters_for({"blk.q.weight": torch.zeros(6, 4)})
    with pytest.raises(ValueError, match=r"blk\.q: adapter makes 6x4, the weight is \(6, 5\)"):
        lora.build_weights(weights, bad, 1.0)
    stray = adapters_for({"blk.k.weight": torch.zeros(6, 5)})
    with pytest.raises(KeyError, match="blk.k"):
        lora.build_weights(weights, stray, 1.0)


def test_read_adapters_refuses_another_safetensors_file(tmp_path):
    t = {"m.lora_A": torch.zeros(2, 3, dtype=torch.float16), "m.lora_B": torch.zeros(4, 2, dtype=torch.float16)}
    plain = tmp_path / "plain.safetensors"
    save_file(t, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors: not a mechmerge LoRA adapter file"):
        lora.read_adapters(plain)
    other = tmp_path / "other.safetensors"
    save_file(t, str(other), metadata={"format": "pt", "rank": "2", "alpha": "4"})
    with pytest.raises(ValueError, match="format 'pt'"):
        lora.read_adapters(other)


def test_save_adapters_refuses_values_float16_cannot_hold(base, tmp_path):
    model = copy.deepcopy(base)
    lora.add_lora(model, RANK, ALPHA, seed=0)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.lora_B[3, 1] = 1e6  # float16 tops out at 65504
    path = tmp_path / "a.safetensors"
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.lora_B: not finite in float16"):
        lora.save_adapters(model, RANK, ALPHA, path)
    assert not path.exists() and not list(tmp_path.iterdir())
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.lora_B[3, 1] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        lora.save_adapters(model, RANK, ALPHA, path)
