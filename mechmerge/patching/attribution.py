"""First-order (attribution) scores: every unit from one forward and backward pass.

    patch_in  ≈ ⟨∇_W m(B), W_E − W_B⟩ / (m(E) − m(B))     gradient at the base
    knockout  ≈ ⟨∇_W m(E), W_E − W_B⟩ / (m(E) − m(B))     gradient at the expert
    anchor    ≈ ⟨∇_W a(B), W_E − W_B⟩ / (a(E) − a(B))     for units at or below the anchor

They are the first Taylor terms of the exact scores, exact when m is linear in the
unit's weights; a unit whose two estimates (at B and at E) disagree is one where
that linearity fails, which `hybrid` uses to decide what to re-measure exactly.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..models.checkpoint import Checkpoint
from ..models.units import Unit
from ..probes import ProbeBatch
from .engine import Anchor
from .runner import LayerRunner


def gradients(model: torch.nn.Module, runner: LayerRunner, batches: Sequence[ProbeBatch],
              anchor: Optional[Anchor]) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
    """(∇m, ∇a) for every parameter (by name; tied copies share one gradient)."""
    named = list(model.named_parameters())  # duplicates removed: a tied weight appears once
    params = [p for _, p in named]
    n_total = sum(b.n_tokens for b in batches)
    gm = [torch.zeros_like(p) for p in params]
    ga = [torch.zeros_like(p) for p in params] if anchor is not None else None
    model.requires_grad_(True)
    try:
        for batch in batches:
            with torch.enable_grad():
                tr = runner.trace(batch)
                m = runner.response_logprobs(tr.inputs[-1], batch).sum() / n_total
                grads = torch.autograd.grad(m, params, retain_graph=anchor is not None, allow_unused=True)
                _accumulate(gm, grads)
                if anchor is not None:
                    h = runner.response_states(runner.block_output(tr, anchor.layer), batch)
                    a = (h @ anchor.v.to(h.device, h.dtype)).sum() / n_total
                    _accumulate(ga, torch.autograd.grad(a, params, allow_unused=True))
            del tr
    finally:
        model.requires_grad_(False)
    by_name = {n: g for (n, _), g in zip(named, gm)}
    by_name_a = {n: g for (n, _), g in zip(named, ga)} if ga is not None else None
    return by_name, by_name_a


def _accumulate(acc: List[torch.Tensor], grads) -> None:
    for a, g in zip(acc, grads):
        if g is not None:
            a.add_(g)


def alias(grads: Dict[str, torch.Tensor], params: Dict[str, torch.nn.Parameter]) -> Dict[str, torch.Tensor]:
    """Make the gradient reachable under every name of a tied parameter."""
    by_id = {id(params[n]): g for n, g in grads.items() if n in params}
    return {n: by_id[id(p)] for n, p in params.items() if id(p) in by_id}


def unit_dots(units: Sequence[Unit], grads: Dict[str, torch.Tensor], base: Checkpoint, expert: Checkpoint
              ) -> Dict[str, float]:
    """⟨grad, W_E − W_B⟩ over each unit's slices, streaming one tensor pair at a time."""
    out: Dict[str, float] = {}
    for u in units:
        total = 0.0
        for name in u.tensors:
            g = grads[name]
            delta = (expert.get(name).to(g.device, torch.float64) - base.get(name).to(g.device, torch.float64))
            for s in u.slices:
                if s.tensor == name:
                    total += float((g.double()[s.index()] * delta[s.index()]).sum())
        out[u.name] = total
    return out
