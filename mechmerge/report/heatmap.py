"""Heatmaps of scores by layer x module type, one PNG per expert.

Rows are the module kinds inside a decoder block, in model order (e.g.
self_attn.q_proj ... mlp.down_proj); columns are blocks. Units outside the blocks
(embeddings, final norm, lm_head) are listed with their values under the layer axis. Read it for
the hierarchy the Weight Patching paper describes: shallow source-side carriers,
then aggregation/routing modules, then downstream execution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..scores import SCORE_KEYS
from .figures import pyplot, save

KEYS = SCORE_KEYS


def grid(data: Dict[str, Any], expert: str, key: str):
    """(matrix [kinds, layers] with NaN for missing, kinds, layers, outside {unit: value})."""
    units = data["units"]
    mods = data["experts"][expert]["modules"]
    kinds: List[str] = []
    layers = sorted({u["layer"] for u in units.values() if 0 <= u["layer"]} - {max(u["layer"] for u in units.values())})
    for name, u in units.items():
        if u["layer"] in layers and u["kind"] not in kinds:
            kinds.append(u["kind"])
    mat = np.full((len(kinds), len(layers)), np.nan)
    outside = {}
    for name, u in units.items():
        v = mods[name].get(key)
        if u["layer"] in layers:
            mat[kinds.index(u["kind"]), layers.index(u["layer"])] = np.nan if v is None else v
        else:
            outside[name] = np.nan if v is None else v
    return mat, kinds, layers, outside


def plot_scores(data: Dict[str, Any], out_dir: Path, keys=KEYS) -> List[Path]:
    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    keys = [k for k in keys if any(s.get(k) is not None for e in data["experts"].values() for s in e["modules"].values())]
    for expert, e in data["experts"].items():
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 0.35 * 14 + 2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            mat, kinds, layers, outside = grid(data, expert, key)
            lim = np.nanmax(np.abs(np.concatenate([mat.ravel(), list(outside.values())]))) if mat.size else 1.0
            lim = lim if np.isfinite(lim) and lim > 0 else 1.0
            im = ax.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
            ax.set_xticks(range(0, len(layers), max(1, len(layers) // 10)),
                          [str(layers[i]) for i in range(0, len(layers), max(1, len(layers) // 10))], fontsize=7)
            # the units outside the blocks (embeddings, final norm, lm_head) under the axis: text in a
            # spare column overlapped the last layers
            rest = ", ".join(f"{n.split('.')[-1]} {v:+.2f}" if np.isfinite(v) else f"{n.split('.')[-1]} –"
                             for n, v in outside.items())
            ax.set_xlabel("layer" + (f"\noutside the blocks: {rest}" if rest else ""), fontsize=8)
            ax.set_title(f"{key}")
            fig.colorbar(im, ax=ax, fraction=0.04)
        rel = "" if e.get("reliable", True) else " (UNRELIABLE)"
        fig.suptitle(f"{expert}{rel}: Weight Patching scores by layer and module")
        paths.append(save(fig, out_dir / f"heatmap-{expert}.png"))
    return paths
