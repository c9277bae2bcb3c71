"""Stage `heatmaps`: `mechmerge plot SCORES --out DIR` for the hybrid and the exact scores,
plus the numbers behind the pictures (where along the depth each specialist's score sits).

The Weight Patching paper reads its maps as a hierarchy: shallow source-side carriers,
then aggregation/routing modules (attention in the middle), then downstream execution
(late MLPs). `profile` condenses a map into thirds of depth x attention/MLP, the share of
the total positive patch_in score each cell holds, so the hierarchy can be checked
without eyeballing colours.

Artifact: hybrid/heatmap-<expert>.png, exact/heatmap-<expert>.png, profile.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..runner import Context, stage


def plot(scores: Path, out: Path) -> list[str]:
    """The command line itself (what a user would run), in a subprocess."""
    res = subprocess.run([sys.executable, "-m", "mechmerge", "plot", str(scores), "--out", str(out)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"mechmerge plot {scores} failed:\n{res.stderr}")
    return [Path(p).name for p in res.stdout.split()]


def profile(data: Dict[str, Any], key: str = "patch_in") -> Dict[str, Any]:
    """Per expert: share of the positive score in each depth third x unit category (attention, mlp, norm, ...),
    and the ten top units."""
    units = data["units"]
    n = max(u["layer"] for u in units.values())  # decoder blocks; final norm / lm_head sit at layer n
    out = {}
    for name, e in data["experts"].items():
        cells: Dict[str, float] = {}
        vals = {u: (m.get(key) or 0.0) for u, m in e["modules"].items()}
        total = sum(v for v in vals.values() if v > 0) or 1.0
        for u, v in vals.items():
            info = units[u]
            if info["layer"] < 0 or info["layer"] >= n:
                part = "outside"
            else:
                part = ("early", "middle", "late")[min(2, 3 * info["layer"] // n)]
            group = info["category"]
            cells[f"{part}/{group}"] = cells.get(f"{part}/{group}", 0.0) + max(v, 0.0) / total
        top = sorted(vals, key=lambda u: -vals[u])[:10]
        out[name] = {"share": dict(sorted(cells.items())),
                     "top": [{"unit": u, key: vals[u], "layer": units[u]["layer"]} for u in top],
                     "top_mean_depth": float(np.mean([units[u]["layer"] for u in top])) / max(1, n - 1)}
    return out


@stage("heatmaps", artifact="heatmaps", requires=("score",))
def heatmaps(ctx: Context, out: Path) -> Dict[str, Any]:
    """`mechmerge plot` heatmaps (layer x module) of the hybrid and exact scores; depth profile."""
    scores = ctx.artifact("score")
    made = {"hybrid": plot(scores / "scores.json", out / "hybrid")}
    exact = sorted(scores.glob("exact-*.json"))
    for f in exact:
        made["exact"] = plot(f, out / "exact")
    prof = {"hybrid": profile(json.loads((scores / "scores.json").read_text()))}
    if exact:
        prof["exact"] = profile(json.loads(exact[0].read_text()))
    (out / "profile.json").write_text(json.dumps(prof, indent=1))
    return {"pngs": made, "top_mean_depth": {k: {e: v["top_mean_depth"] for e, v in p.items()} for k, p in prof.items()}}
