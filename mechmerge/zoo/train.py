"""A small deterministic trainer for the zoo's models.

The data is an endless stream of (prompt, response) pairs drawn from a seeded
`random.Random`, so no example repeats in a way that depends on epochs and the run is
fixed by the seed. A sequence is `<s> prompt response </s>`: exactly the tokens
`mechmerge.probes.tokenize_probe` gives for the prompt and the response, plus the EOS
that teaches the model to stop. The loss is the mean cross-entropy over the response
and EOS tokens only; the prompt is context, not a target.

Batches are right-padded and run without an attention mask: with causal attention a
real token never sees the padding after it, so this is exact, and it is faster.
Reproducible run to run on one machine (same torch build and thread count); other
CPUs may differ in the last float bits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, char_ids

Pair = Tuple[str, str]
Example = Tuple[List[int], int]  # (token ids, index of the first response token)
IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 100  # linear warmup: Adam's first updates are large and noisy
    min_lr: float = 0.1  # cosine decay ends at this fraction of lr, so late steps still learn
    weight_decay: float = 0.01  # on matrices only (nanoGPT): norms and biases are left alone
    grad_clip: float = 1.0
    seed: int = 0


def encode_pair(prompt: str, response: str) -> Tuple[List[int], int]:
    """`<s> prompt response </s>` as ids, and the index of the first response token."""
    ids = [BOS_ID] + char_ids(prompt)
    start = len(ids)
    return ids + char_ids(response) + [EOS_ID], start


def pad_batch(rows: Sequence[Example], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids [B, T] and next-token targets [B, T]: IGNORE except where
    position t predicts a response token (rows are (ids, index of the first response token))."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for row, (seq, start) in enumerate(rows):
        ids[row, : len(seq)] = torch.tensor(seq)
        tgt[row, start - 1: len(seq) - 1] = torch.tensor(seq[start:])
    return ids, tgt


def collate(pairs: Sequence[Pair]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`pad_batch` of the encoded pairs: targets are the response and its EOS."""
    return pad_batch([encode_pair(p, r) for p, r in pairs], PAD_ID)


def warmup_cosine(step: int, total: int, lr: float, warmup: int, min_lr: float) -> float:
    """Learning rate for 0-based `step` of `total`: linear warmup, then cosine down to min_lr * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return lr * (min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * frac)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr)


def loss_on(model, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # [B, T, V]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE)


def train(model: torch.nn.Module, sample: Callable[[random.Random], Pair], cfg: TrainConfig,
          on_step: Optional[Callable[[int, float], None]] = None) -> List[float]:
    """Train `model` in place for cfg.steps AdamW steps on pairs drawn by `sample(rng)`.

    `on_step(step, loss)` is called after each update with the 1-based step count (for
    progress bars and intermediate checkpoints). Returns the loss of every step.
    """
    torch.manual_seed(cfg.seed)
    rng = random.Random(f"train:{cfg.seed}")
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    losses: List[float] = []
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            ids, tgt = collate([sample(rng) for _ in range(cfg.batch_size)])
            loss = loss_on(model, ids, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        model.eval()
    return losses
