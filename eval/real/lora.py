"""LoRA for the specialists: small adapters that define a full-weight model exactly.

Why LoRA here: the adapters of a specialist are a few MB, so they are committed
(`eval/real/store/`), and a later session, on any machine, rebuilds the same specialist
bit for bit from the base and its adapter file instead of fine-tuning again. Full
fine-tunes (the first runs) were 0.5-1 GB each and lived only in a cache that did not
survive the machine.

Training wraps every linear layer of the decoder blocks (attention q/k/v/o, MLP
gate/up/down) as `y = W x + (alpha / r) * B (A x)`, A [r, in] random, B [out, r] zero, so
the model starts as the base. Embeddings, norms and the lm_head stay the base's.

The adapters are rounded to float16 when saved, and a specialist is always built from the
saved file (`build_weights`): `W + (alpha / r) * sum_i outer(B[:, i], A[i, :])`, summed in
float64 one rank at a time and rounded once to the weight's dtype. Elementwise IEEE
operations in a fixed order give the same bits on every machine, where a matrix product's
blocking would not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterator, Tuple

import torch
from safetensors.torch import load_file, save_file

FORMAT = "mechmerge.lora"


class LoRALinear(torch.nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (x: [..., in] -> [..., out])."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        # peft's init: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so training starts at the base model
        bound = 1 / math.sqrt(base.in_features)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def targets(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Linear]]:
    """Every nn.Linear inside the decoder blocks (names with a `layers` part), by module name."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "layers" in name.split("."):
            yield name, mod


def add_lora(model: torch.nn.Module, rank: int, alpha: float, seed: int) -> Dict[str, torch.nn.Parameter]:
    """Freeze `model`, wrap its targets, and return the adapter parameters by name (the names
    `named_parameters` gives them, so optimizer checkpoints resume by name)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be 1 or more, got {rank}")
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    found = list(targets(model))
    if not found:
        raise ValueError("no linear layers inside decoder blocks ('layers' in the module path) to adapt")
    for name, lin in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(lin, rank, alpha, g))
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adapter_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """`<module>.lora_A` [r, in] / `<module>.lora_B` [out, r], rounded to float16 (what is saved)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            out[f"{name}.lora_A"] = mod.lora_A.detach().to(torch.float16).contiguous()
            out[f"{name}.lora_B"] = mod.lora_B.detach().to(torch.float16).contiguous()
    return out


def save_adapters(model: torch.nn.Module, rank: int, alpha: float, path: Path) -> None:
    state = adapter_state(model)
    for k, t in state.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{k}: not finite in float16 (training diverged, or a value beyond 65504)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "rank": str(rank), "alpha": repr(alpha)})
    tmp.replace(path)


def read_adapters(path: Path) -> Tuple[Dict[str, torch.Tensor], float]:
    """(tensors, scale alpha / r) of an adapter file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a mechmerge LoRA adapter file (format {meta.get('format')!r})")
    return load_file(str(path)), float(meta["alpha"]) / int(meta["rank"])


def delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B @ A in float64, summed one rank at a time (the same bits on every machine)."""
    acc = torch.zeros(b.shape[0], a.shape[1], dtype=torch.float64)
    for i in range(a.shape[0]):
        acc += torch.outer(b[:, i].double(), a[i].double())
    return acc * scale


def build_weights(weights: Dict[str, torch.Tensor], adapters: Dict[str, torch.Tensor],
                  scale: float) -> Dict[str, torch.Tensor]:
    """The specialist's state dict: `weights` (the base's, by parameter name) with every
    adapted `<module>.weight` replaced by W + delta, rounded once to W's dtype."""
    out = dict(weights)
    modules = sorted({k.rsplit(".", 1)[0] for k in adapters})
    for m in modules:
        key = f"{m}.weight"
        if key not in weights:
            raise KeyError(f"adapter for {m!r}, but the base has no tensor {key!r}")
        w = weights[key]
        a, b = adapters[f"{m}.lora_A"], adapters[f"{m}.lora_B"]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ValueError(f"{m}: adapter makes {b.shape[0]}x{a.shape[1]}, the weight is {tuple(w.shape)}")
        out[key] = (w.double() + delta(a, b, scale)).to(w.dtype)
    return out


@torch.no_grad()
def apply_adapters(model: torch.nn.Module, path: Path) -> int:
    """Merge the adapter file at `path` into a plain (unwrapped) `model` in place; returns the
    number of weights changed."""
    adapters, scale = read_adapters(path)
    keys = sorted({k.rsplit(".", 1)[0] + ".weight" for k in adapters})
    weights = {k: model.get_parameter(k).detach() for k in keys}
    for k, w in build_weights(weights, adapters, scale).items():
        model.get_parameter(k).copy_(w)
    return len(keys)
