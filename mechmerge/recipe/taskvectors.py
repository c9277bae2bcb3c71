"""Per-unit task-vector statistics read from the checkpoints (lazily, once):
‖E_e − B‖ per unit (the magnitude control) and cos(E_a − B, E_b − B) per unit and
expert pair (the sign agreement the conflict measures use)."""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..models.checkpoint import Checkpoint
from ..models.load import param_order
from ..models.units import discover_units


@lru_cache(maxsize=8)
def _stats(base: str, experts: Tuple[Tuple[str, str], ...], granularity: str,
           allow_pickle: bool = False) -> Tuple[Dict[str, np.ndarray], np.ndarray, List[str]]:
    b = Checkpoint.open(base, "base", allow_pickle)
    units = discover_units(param_order(b), b.family, b.num_layers, granularity, b.config)
    names = [e for e, _ in experts]
    cks = [Checkpoint.open(p, f"expert {e!r}", allow_pickle) for e, p in experts]
    E, U = len(cks), len(units)
    gram = np.zeros((U, E, E))
    for j, u in enumerate(units):
        for t in u.tensors:
            base_t = b.get(t).double()
            deltas = [ck.get(t).double() - base_t for ck in cks]
            for s in u.slices:
                if s.tensor != t:
                    continue
                flat = torch.stack([d[s.index()].reshape(-1) for d in deltas])  # [E, n]
                gram[j] += (flat @ flat.T).numpy()
    norms = np.sqrt(np.maximum(np.einsum("uee->ue", gram), 0.0))  # [U, E]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = gram / (norms[:, :, None] * norms[:, None, :])
    cos = np.nan_to_num(cos)
    return {n: norms[:, i] for i, n in enumerate(names)}, cos, [u.name for u in units]


def magnitudes(data: dict, experts: Sequence[str], allow_pickle: bool = False) -> Dict[str, np.ndarray]:
    """expert -> ‖E − B‖ per unit, in the scores file's unit order."""
    norms, _, order = _stats(data["base"], tuple((e, data["experts"][e]["model"]) for e in experts), data["granularity"],
                             allow_pickle)
    idx = [order.index(u) for u in data["units"]]
    return {e: norms[e][idx] for e in experts}


def cosines(data: dict, experts: Sequence[str], allow_pickle: bool = False) -> np.ndarray:
    """[units, experts, experts] cosine between task vectors on each unit (0 where one is zero)."""
    _, cos, order = _stats(data["base"], tuple((e, data["experts"][e]["model"]) for e in experts), data["granularity"],
                           allow_pickle)
    idx = [order.index(u) for u in data["units"]]
    return cos[idx]
