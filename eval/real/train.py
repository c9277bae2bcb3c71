"""Deterministic, resumable supervised fine-tuning of a real model on CPU.

A step's batch is a pure function of (seed, step): `batch_size - n_replay` task examples
from the epoch's seeded permutation of the training set, plus `n_replay` of the base's
own plain answers (replay keeps general quality; the task vector then carries the
constraint, not a drift of everything). So a run killed after step k and resumed from its
checkpoint makes exactly the batches the uninterrupted run would have made.

Every example is tokenized by `mechmerge.probes.tokenize_probe`, the same ids the
specialist is later scored and evaluated on (chat template and end-of-turn included);
the loss is the mean cross-entropy over response tokens only. Logits are computed only
at those positions: for Gemma-3's 262k vocabulary the full [B, T, V] logits would cost
more than the rest of the step.

Batches are right-padded and run without an attention mask: with causal attention a
real token never sees the padding after it (exact, and faster).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mechmerge.probes import Probe, tokenize_probe
from mechmerge.zoo.train import IGNORE, Example, pad_batch, warmup_cosine

from .lora import add_lora


@dataclass(frozen=True)
class FinetuneConfig:
    lr: float = 3e-5
    epochs: float = 3.0  # passes over the task examples (200 train examples: 100 steps of 6 + 2 replay)
    batch_size: int = 8
    replay: float = 0.25  # share of every batch taken from the base's own plain answers
    warmup: int = 10  # linear warmup: Adam's first updates are large and noisy
    min_lr: float = 0.1  # cosine decay ends at this fraction of lr
    # No weight decay: decay shrinks every weight, a dense component of the task vector
    # that has nothing to do with the skill and that merging and patching would then carry.
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    freeze_embeddings: bool = False  # Gemma-3: the 262k x 640 matrix is also the lm_head
    max_len: int = 320  # longer examples fail loudly (SmolLM2's longest is 185 tokens)
    checkpoint_every: int = 25  # steps between resumable checkpoints
    # LoRA (lora.py) on every linear layer of the blocks; 0: a full fine-tune. Rank 8 makes an
    # adapter file of 3.8-4.9 MB (float16), small enough to commit, so specialists outlive the cache.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the update is scaled by alpha / rank
    # Forward and backward matmuls in bfloat16, weights and optimizer in float32: 1.6x faster
    # steps on the AVX512-BF16 CPU here (SmolLM2, LoRA: 3.1 s vs 5.0 s a step on 2 threads).
    autocast_bf16: bool = False

    @property
    def n_replay(self) -> int:
        return int(round(self.batch_size * self.replay))

    def steps(self, n_train: int) -> int:
        return math.ceil(self.epochs * n_train / (self.batch_size - self.n_replay))



def encode(probes: Sequence[Probe], tokenizer, max_len: int, source: str) -> List[Example]:
    out = []
    for p in probes:
        t = tokenize_probe(p, tokenizer)
        if len(t.ids) > max_len:
            raise ValueError(f"{source}:{p.line}: {len(t.ids)} tokens, more than max_len={max_len}")
        out.append((t.ids, t.response_start))
    return out


def order(n: int, count: int, seed: int, stream: str) -> List[int]:
    """The first `count` indices of an endless sequence of seeded permutations of range(n)."""
    out: List[int] = []
    epoch = 0
    while len(out) < count:
        perm = list(range(n))
        random.Random(f"{seed}:{stream}:{epoch}").shuffle(perm)
        out += perm
        epoch += 1
    return out[:count]


def batch_for(step: int, task: Sequence[Example], replay: Sequence[Example], cfg: FinetuneConfig,
              total: int) -> List[Example]:
    n_task = cfg.batch_size - cfg.n_replay
    t_order = order(len(task), total * n_task, cfg.seed, "task")
    rows = [task[i] for i in t_order[step * n_task: (step + 1) * n_task]]
    if cfg.n_replay and replay:
        r_order = order(len(replay), total * cfg.n_replay, cfg.seed, "replay")
        rows += [replay[i] for i in r_order[step * cfg.n_replay: (step + 1) * cfg.n_replay]]
    return rows


def loss_on(model, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target positions; logits only where they are needed."""
    hidden = model.base_model(input_ids=ids).last_hidden_state  # [B, T, H]
    sel = tgt != IGNORE
    logits = model.get_output_embeddings()(hidden[sel])  # [N, V]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), tgt[sel])


def lr_at(step: int, total: int, cfg: FinetuneConfig) -> float:
    return warmup_cosine(step, total, cfg.lr, cfg.warmup, cfg.min_lr)


def trainable(model, cfg: FinetuneConfig) -> Dict[str, torch.nn.Parameter]:
    """Parameters to train (tied copies once); the input embedding is left out when frozen."""
    model.requires_grad_(True)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(False)
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_state(path: Path, step: int, params: Dict[str, torch.nn.Parameter], opt, log: List[Dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "params": {n: p.detach() for n, p in params.items()}, "optim": opt.state_dict(),
                "log": log}, tmp)
    os.replace(tmp, path)


def train(model, tokenizer, task: Sequence[Probe], replay: Sequence[Probe], cfg: FinetuneConfig, work: Path,
          on_step: Optional[Callable[[int, float], None]] = None, log: Callable[[str], None] = print,
          sources: Tuple[str, str] = ("task", "replay")) -> Dict[str, Any]:
    """Fine-tune `model` in place (with `cfg.lora_rank`, its linear layers are wrapped with
    adapters and stay wrapped: save them with `lora.save_adapters`); resumes from
    `work/state.pt` when it is there.

    `on_step(step, loss)` runs after every update (1-based step), e.g. to save
    intermediate checkpoints. Returns {"steps", "seconds", "final_loss", "log": [...]}.
    """
    from mechmerge.probes import pad_id_of

    torch.manual_seed(cfg.seed)
    task_ex = encode(task, tokenizer, cfg.max_len, sources[0])
    replay_ex = encode(replay, tokenizer, cfg.max_len, sources[1]) if cfg.n_replay else []
    total = cfg.steps(len(task_ex))
    params = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.seed) if cfg.lora_rank else trainable(model, cfg)
    decay = [p for p in params.values() if p.dim() >= 2]
    other = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.pt"
    history: List[Dict[str, Any]] = []
    start = 0
    if state_file.is_file():
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for n, t in st["params"].items():
                params[n].copy_(t)
        opt.load_state_dict(st["optim"])
        start, history = int(st["step"]), list(st["log"])
        log(f"resumed at step {start}/{total} from {state_file}")
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    model.train()
    t0 = time.perf_counter()
    spent = sum(h["seconds"] for h in history)
    try:
        for step in range(start, total):
            ts = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            ids, tgt = pad_batch(batch_for(step, task_ex, replay_ex, cfg, total), pad)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                loss = loss_on(model, ids, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip))
            opt.step()
            history.append({"step": step + 1, "loss": loss.item(), "grad_norm": gnorm, "lr": lr_at(step, total, cfg),
                            "tokens": int(ids.numel()), "seconds": time.perf_counter() - ts})
            if (step + 1) % 5 == 0 or step + 1 == total:
                recent = history[-5:]
                done = time.perf_counter() - t0
                log(f"step {step + 1}/{total} loss {sum(h['loss'] for h in recent) / len(recent):.4f} "
                    f"({sum(h['seconds'] for h in recent) / len(recent):.1f}s/step, "
                    f"{done / (step + 1 - start) * (total - step - 1):.0f}s left)")
            if on_step is not None:
                on_step(step + 1, history[-1]["loss"])
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                save_state(state_file, step + 1, params, opt, history)
    finally:
        model.eval()
        model.requires_grad_(False)
    tail = history[-max(1, min(10, len(history))):]
    return {"steps": total, "resumed_at": start, "seconds": spent + (time.perf_counter() - t0),
            "final_loss": sum(h["loss"] for h in tail) / len(tail), "first_loss": history[0]["loss"] if history else None,
            "config": asdict(cfg), "log": history}
