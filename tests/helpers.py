"""Tiny random models of several families, planted experts and probe files (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import torch

from mechmerge.zoo.tokenizer import build_char_tokenizer, vocab_size

V = vocab_size()

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2"]


def tiny_config(family: str, layers: int = 3, tie: bool = False):
    import transformers as tf

    common = dict(vocab_size=V, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=tie, **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=8, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(head_dim=8, **llama_like)
    if family == "gemma2":
        return tf.Gemma2Config(head_dim=8, sliding_window=8, query_pre_attn_scalar=8, final_logit_softcapping=30.0,
                               attn_logit_softcapping=50.0, **llama_like)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(head_dim=8, sliding_window=8, query_pre_attn_scalar=8, **llama_like)
    if family == "phi3":
        return tf.Phi3Config(**llama_like)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_positions=128, n_embd=32, n_layer=layers, n_head=4,
                             bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    raise ValueError(family)


def make_model(family: str, path: Path, seed: int = 0, layers: int = 3, tie: bool = False) -> Path:
    """Save a randomly initialised tiny model with the char tokenizer to `path`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers, tie))
    # Random init leaves norms at exactly 1 and biases at 0; jitter them so that every
    # unit influences the output and planted changes are visible everywhere.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return Path(path)


def write_probes(path: Path, pairs: Iterable[Tuple[str, str]]) -> Path:
    with open(path, "w") as f:
        for prompt, response in pairs:
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    return Path(path)


def default_pairs(n: int = 6, seed: int = 0) -> List[Tuple[str, str]]:
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghij"
    out = []
    for i in range(n):
        k = 3 + i % 3
        s = "".join(letters[int(j)] for j in torch.randint(0, len(letters), (k,), generator=g))
        out.append((f"rev {s}=", s[::-1]))
    return out


def plant_expert(base: Path, out: Path, units: Sequence[str], probes: Path, steps: int = 30, lr: float = 0.05,
                 seed: int = 0) -> Path:
    """An expert that differs from `base` only in `units`: a few Adam steps on the probe
    responses with every other parameter frozen, so the expert is better on its probes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechmerge.probes import load_probes, make_batches, tokenize_all

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    prefixes = tuple(u + "." for u in units)
    train = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
    assert train, f"no parameter under {units}"
    for p in model.parameters():
        p.requires_grad_(False)
    for p in train:
        p.requires_grad_(True)
    batch = make_batches(tokenize_all(load_probes(probes), tok, None), 64, 0)[0]
    opt = torch.optim.Adam(train, lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        lp = torch.log_softmax(logits[batch.rows, batch.positions], -1).gather(1, batch.targets[:, None])
        loss = -lp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)


def noisy_expert(base: Path, out: Path, seed: int, scale: float = 0.02, only: Sequence[str] = ()) -> Path:
    """base + Gaussian noise on every parameter (or only those under `only`)."""
    from safetensors.torch import load_file, save_file
    import shutil

    out = Path(out)
    shutil.copytree(base, out)
    sd = load_file(str(Path(base) / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if not only or k.startswith(tuple(only)):
            sd[k] = v + scale * torch.randn(v.shape, generator=g)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
