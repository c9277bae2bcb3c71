"""Stage `merge`: `mechmerge merge` of each recipe (mergekit's engine), with its model card.

The merged models stay in the cache (hundreds of MB each); their weights digests are
recorded, so two runs can be compared without the weights.

Artifact: <recipe>/ (HF model dir with README.md model card and mechmerge_scores.json),
merge.json (digests, seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

from mechmerge.merge.run import MergeRunOptions, merge
from mechmerge.models.digest import weights_digest

from ..runner import Context, stage
from .recipe import RECIPES


@stage("merge", artifact="merged", requires=("recipe",))
def merge_stage(ctx: Context, out: Path) -> Dict[str, Any]:
    """`mechmerge merge` of the guided and the uniform recipe (mergekit underneath), with model cards."""
    recipes = ctx.artifact("recipe")
    rec: Dict[str, Any] = {"seconds": {}, "weights_digest": {}}
    for label in RECIPES:
        t0 = time.perf_counter()
        merge(MergeRunOptions(recipe=str(recipes / f"{label}.yaml"), out=str(out / label)),
              warn=lambda m: ctx.log(f"  warning: {m}"))
        rec["seconds"][label] = time.perf_counter() - t0
        rec["weights_digest"][label] = weights_digest(out / label)
        ctx.log(f"  {label}: merged in {rec['seconds'][label]:.0f}s")
    return rec
