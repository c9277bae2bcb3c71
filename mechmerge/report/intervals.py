"""Bootstrap intervals of each expert's top units, one PNG per expert (`--bootstrap N`).

A heatmap cell has no room for an interval, so scores with intervals get a second
figure: the top units of each score as points with their percentile intervals, ranked
as the scores rank them. Neighbours whose intervals overlap are ties (their order is
not established by the probes): they are joined by a bracket and marked '='. Units
that hybrid scoring estimated by attribution have no interval and are drawn hollow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..patching.bootstrap import ties
from ..scores import SCORE_KEYS
from .figures import pyplot, save

@dataclass(frozen=True)
class Row:
    unit: str
    value: float
    interval: Optional[List[float]]  # [low, high] or None (no exact measurement)
    tie_with_next: bool


def interval_rows(expert: Dict[str, Any], key: str, k: int) -> List[Row]:
    """The top `k` units by `key`, best first, with intervals and tie marks."""
    mods = expert["modules"]
    ranked = sorted((u for u, s in mods.items() if s.get(key) is not None), key=lambda u: -mods[u][key])[:k]
    ci = {u: mods[u].get("ci", {}) for u in ranked}
    tie = ties(ranked, ci, key)
    return [Row(u, float(mods[u][key]), ci[u].get(key), t) for u, t in zip(ranked, tie)]


def plot_intervals(data: Dict[str, Any], out_dir: Path, k: int = 15) -> List[Path]:
    """intervals-<expert>.png for every expert scored with --bootstrap (none for the others)."""
    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for expert, e in data["experts"].items():
        if "bootstrap" not in e:
            continue
        keys = [key for key in SCORE_KEYS if any(s.get("ci", {}).get(key) for s in e["modules"].values())]
        fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 0.32 * k + 1.8), squeeze=False)
        for ax, key in zip(axes[0], keys):
            _panel(ax, interval_rows(e, key, k), key)
        b = e["bootstrap"]
        fig.suptitle(f"{expert}: top {k} units with {100 * b['level']:.0f}% bootstrap intervals "
                     f"({b['replicates']} resamples of the probes); '=' ties with the unit below")
        paths.append(save(fig, out_dir / f"intervals-{expert}.png"))
    return paths


def _panel(ax, rows: List[Row], key: str) -> None:
    ys = list(range(len(rows)))[::-1]  # best at the top
    for y, r in zip(ys, rows):
        if r.interval is not None:
            lo, hi = r.interval
            ax.errorbar(r.value, y, xerr=[[max(0.0, r.value - lo)], [max(0.0, hi - r.value)]], fmt="o",
                        color="tab:blue", ecolor="tab:blue", capsize=3, markersize=4)
        else:
            ax.plot(r.value, y, "o", mfc="none", color="tab:gray", markersize=4)
    # a bracket at the right edge joins each run of tied neighbours
    x = ax.get_xlim()[1]
    for i, r in enumerate(rows):
        if r.tie_with_next:
            ax.plot([x, x], [ys[i], ys[i + 1]], color="tab:red", lw=2, solid_capstyle="butt")
    ax.set_yticks(ys, [f"{r.unit}{' =' if r.tie_with_next else ''}" for r in rows], fontsize=7)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel(key)
    n_ties = sum(r.tie_with_next for r in rows)
    pairs = sum(a.interval is not None and b.interval is not None for a, b in zip(rows, rows[1:]))
    ax.set_title(f"{key}: {n_ties} of {pairs} neighbouring pairs with intervals tied" if rows else key)
