"""Plot of a track file: the top units across checkpoints, and the transition metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np

from .figures import pyplot, save


def plot_track(data: Dict[str, Any], out_dir: Path, name: str = "track.png") -> Path:
    plt = pyplot()

    names = data["checkpoints"]
    rows = []
    for n in names:
        for u in data["top"][n]["all"]:
            if u not in rows:
                rows.append(u)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, max(4, 0.28 * len(rows) + 1.5)),
                                 gridspec_kw={"width_ratios": [1.3, 1]})
    # older track files lack "reliable": treat them as reliable
    ticks = [n if data.get("reliable", {}).get(n, True) else f"{n} (unreliable)" for n in names]
    if rows:
        mat = np.array([[data["patch_in"][n][u] for n in names] for u in rows], dtype=float)
        lim = np.nanmax(np.abs(mat)) or 1.0
        im = a1.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        for c, n in enumerate(names):
            for r, u in enumerate(rows):
                if u in data["top"][n]["all"]:
                    a1.text(c, r, "●", ha="center", va="center", fontsize=7)
        a1.set_xticks(range(len(names)), ticks, rotation=30, ha="right")
        a1.set_yticks(range(len(rows)), rows, fontsize=7)
        fig.colorbar(im, ax=a1, fraction=0.04)
    else:  # no top units anywhere: an empty heatmap would fail in nanmax and show nothing
        a1.text(0.5, 0.5, "no unit has positive patch_in in\n" + ", ".join(ticks), ha="center", va="center",
                transform=a1.transAxes)
        a1.set_xticks([])
        a1.set_yticks([])
    a1.set_title(f"patch_in of every checkpoint's top-{data['top_k']} units (● = in that top-{data['top_k']})")
    tr = data["transitions"]
    x = np.arange(len(tr))
    labels = [f"{t['from']}→{t['to']}" for t in tr]

    def values(xs):  # None (empty top sets, fewer than two changed units): a gap in the line
        return [np.nan if v is None else v for v in xs]

    for key, style in (("all", "-"), ("attention", "--"), ("mlp", ":")):
        a2.plot(x, values(t["distance"][key] for t in tr), style, marker="o", label=f"distance ({key})",
                color="#c44e52")
    a2.plot(x, values(t["stability"] for t in tr), "-", marker="s", label="stability (Spearman)", color="#4c72b0")
    for key, color in (("earlier_top", "#55a868"), ("own_top", "#8172b2"), ("random", "#999999"),
                       ("magnitude", "#dd8452")):
        a2.plot(x, [t["faithfulness"][key] for t in tr], "-.", marker="^", label=f"faithfulness: {key}", color=color)
    a2.set_xticks(x, labels, rotation=30, ha="right")
    a2.axhline(0, color="k", lw=0.5)
    a2.legend(fontsize=7)
    a2.set_title("between consecutive checkpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir / name)
