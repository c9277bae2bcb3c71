"""Greedy generation in batches, and the exact-match metric.

Prompts are tokenized exactly as `mechmerge.probes.tokenize_probe` tokenizes them for
scoring (special tokens added, so BOS comes first; chat probes through the chat
template), so a probe is measured on the same tokens it was scored on. Batches are
left-padded with an attention mask (Hugging Face derives position ids from the mask),
which gives the same tokens as generating one prompt at a time; each row stops at its
first EOS.
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch

from ..probes import Probe, pad_id_of, tokenize_probe

Prompt = Union[str, Probe]


def prompt_ids(prompt: Prompt, tokenizer) -> List[int]:
    probe = prompt if isinstance(prompt, Probe) else Probe(prompt=prompt, response="")
    return tokenize_probe(probe, tokenizer).prompt_ids


def left_pad(rows: Sequence[List[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T], padding on the left."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, T - len(r):] = 1
    return ids, mask


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int,
                    batch_size: int = 64) -> List[str]:
    """The greedy continuation of each prompt, cut before its first EOS.

    Special tokens other than EOS are kept in the text (decoded as their markers), so a
    model that emits <pad> or <s> is not silently scored as if it had not.
    """
    eos_ids = stop_ids(model, tokenizer)
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: List[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = [prompt_ids(p, tokenizer) for p in prompts[start: start + batch_size]]
            ids, mask = left_pad(rows, pad)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos_ids or None, pad_token_id=pad,
                                 num_beams=1, top_p=None, top_k=None, temperature=None)
            for row in gen[:, ids.shape[1]:].tolist():
                cut = [row.index(e) for e in eos_ids if e in row]
                if cut:
                    row = row[: min(cut)]
                out.append(tokenizer.decode(row, skip_special_tokens=False))
    finally:
        model.train(was_training)
    return out


def stop_ids(model, tokenizer) -> List[int]:
    """Token ids that end a response: the tokenizer's EOS plus the model's
    generation_config EOS list (chat models end turns with their own marker, e.g.
    Gemma's <end_of_turn>)."""
    ids: List[int] = []
    cfg = getattr(model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    for i in [tokenizer.eos_token_id] + (extra if isinstance(extra, list) else [extra]):
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def normalize(text: str) -> str:
    """Strip surrounding whitespace, nothing else.

    Responses are compared as strings: case, inner spaces and punctuation are part of
    the answer (an `upper` skill is wrong in lowercase), so only the whitespace that
    tokenizers and chat templates add or drop at the ends is forgiven.
    """
    return text.strip()


def exact_match(pred: str, ref: str) -> bool:
    return normalize(pred) == normalize(ref)
