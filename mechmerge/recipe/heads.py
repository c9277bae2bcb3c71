"""Head-granularity recipes: fold per-head weights into derived experts.

mergekit weights whole tensors, not rows of them, so a per-head decision cannot be a
`filter` entry. Instead each expert E gets a *derived expert* D written as a plain
safetensors model: on every attention head's slices (q/k/v rows, o columns)
D = B + w_h (E − B); everywhere else D = E. The recipe then gives D weight 1 on the
attention tensors and the strategy's per-module weights on every other tensor, so for
task arithmetic (and linear) the merge is exactly B + Σ_e w_(e,u) (E_e − B) per head
and per module. With `topk` and background 0 a derived expert is literally "the expert
with its unselected heads reverted to the base". For TIES/DARE the sign election and
sparsification see the already-scaled head deltas, a close but not identical reading.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..io import atomic_dir
from ..models.checkpoint import Checkpoint
from ..models.units import Unit
from ..scores import check_expert_name


def is_head(unit: Unit) -> bool:
    return ".heads." in unit.name


def fold_units(units: Sequence[Unit], weights: np.ndarray) -> Tuple[List[str], Dict[str, List[str]], np.ndarray]:
    """Recipe units for head-level weights: every head unit of a block becomes part of one
    `<block>.<attn>.heads` pseudo-unit at weight 1 (the head weights live in the derived
    experts); other units keep their weight. Returns (names, unit -> tensors, [E, U'] weights)."""
    names: List[str] = []
    tensors: Dict[str, List[str]] = {}
    cols: List[np.ndarray] = []
    for i, u in enumerate(units):
        if is_head(u):
            name = u.name.rsplit(".heads.", 1)[0] + ".heads"
            if name not in tensors:
                names.append(name)
                tensors[name] = []
                cols.append(np.ones(weights.shape[0]))
            tensors[name].extend(t for t in u.tensors if t not in tensors[name])
        else:
            names.append(u.name)
            tensors[u.name] = list(u.tensors)
            cols.append(weights[:, i])
    return names, tensors, np.stack(cols, axis=1)


def derive_expert(base: Checkpoint, expert: Checkpoint, units: Sequence[Unit], w: np.ndarray, out: Path,
                  force: bool = False) -> None:
    """Write the derived expert of `expert` (row `w` of head-level weights) to `out`."""
    from safetensors.torch import save_file

    head_slices: Dict[str, List[Tuple[object, float]]] = {}
    for i, u in enumerate(units):
        if is_head(u):
            for s in u.slices:
                head_slices.setdefault(s.tensor, []).append((s.index(), float(w[i])))
    with atomic_dir(out, force=force) as tmp:
        for f in expert.path.iterdir():  # config, tokenizer, chat template, generation config
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth")) \
                    and f.name != "model.safetensors.index.json":
                shutil.copy2(f, tmp / f.name)
        state = {}
        for name in expert.tensors:
            t = expert.get(name)
            if name in head_slices:
                b = base.get(name)
                d = t.clone()
                for idx, wh in head_slices[name]:
                    if wh != 1.0:  # exact copies at 0 and 1: b + 1 * (t - b) need not round to t
                        d[idx] = b[idx] if wh == 0.0 else b[idx] + wh * (t[idx] - b[idx])
                t = d
            state[name] = t.contiguous()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})


def derive_experts(data: Mapping, units: Sequence[Unit], experts: Sequence[str], weights: np.ndarray,
                   out_dir: Path, force: bool = False) -> Dict[str, str]:
    """Derived experts for every expert under `out_dir/<name>`; returns name -> path."""
    base = Checkpoint.open(data["base"], "base")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, e in enumerate(experts):
        check_expert_name(e, "derived expert")  # a name with '/' or '..' would write outside out_dir
        dest = out_dir / e
        derive_expert(base, Checkpoint.open(data["experts"][e]["model"], f"expert {e!r}"), units, weights[i],
                      dest, force=force)
        paths[e] = str(dest)
    return paths
