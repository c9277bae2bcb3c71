"""Stage `recipe`: `mechmerge recipe` on the hybrid scores of all the specialists at once.

Two recipes, both mergekit YAML that stock `mergekit-yaml` runs:
- guided.yaml: mechmerge's default (the `mix` strategy on patch_in, its scale and alpha
  calibrated on the specialists' scoring probes);
- uniform.yaml: plain task arithmetic, every unit of every specialist at one scale,
  calibrated on the same probes: the tuned uniform merge the guided one has to beat.

The YAMLs name the specialists by their absolute cache paths (that is what mergekit reads),
so they are not stored; the stage takes minutes. Each YAML is also checked the way a user's
`mergekit-yaml` would read it (mergekit's own MergeConfiguration), and the pair is copied to
eval/real/results/<model>/ for reading.

Artifact: guided.yaml, uniform.yaml, recipes.json (strategy, parameters, calibration).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict

import yaml

from mechmerge.recipe.build import RecipeOptions, make_recipe
from mechmerge.recipe.calibrate import OBJECTIVES

from ..artifacts import experts, publish_dir
from ..runner import Context, stage

RECIPES = {"guided": {}, "uniform": {"strategy": "uniform", "calibrate": True}}


def check_with_mergekit(path: Path) -> None:
    """mergekit's own parser over the file, as `mergekit-yaml` starts."""
    from mergekit.config import MergeConfiguration

    MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))


@stage("recipe", artifact="recipes", requires=("score",))
def recipe_stage(ctx: Context, out: Path) -> Dict[str, Any]:
    """`mechmerge recipe` of all the specialists: guided (default, calibrated) and tuned uniform YAML."""
    names = [n for n in ctx.param("recipe.experts", ",".join(experts(ctx))).split(",") if n]
    scores = ctx.artifact("score") / "scores.json"
    summary: Dict[str, Any] = {"experts": names, "recipes": {}, "seconds": {}}
    dest = publish_dir(ctx, "recipe")
    for label, extra in RECIPES.items():
        t0 = time.perf_counter()
        r = make_recipe(RecipeOptions(scores=str(scores), out=str(out / f"{label}.yaml"), experts=tuple(names),
                                      device="cpu", progress=ctx.param("recipe.progress", True), **extra))
        check_with_mergekit(out / f"{label}.yaml")
        summary["seconds"][label] = time.perf_counter() - t0
        chosen = next((row for row in r.calibration or [] if row.get("chosen")), None)
        summary["recipes"][label] = {
            "strategy": r.strategy, "params": r.params, "score": r.score, "candidates": len(r.calibration or []),
            "calibration_objective": chosen and chosen["objective"],
            # every measure, not only the objective: sequence accuracy is 0 for every candidate on answers of
            # 40-90 tokens, and the choice then falls to the tie-breaks (token accuracy, recovery)
            "calibration": [{"params": row["params"], **{m: sum(row[m].values()) / len(row[m]) for m in OBJECTIVES}}
                            for row in r.calibration or []]}
        ctx.log(f"  {label}: {r.strategy} {r.params} ({summary['seconds'][label]:.0f}s)")
        shutil.copyfile(out / f"{label}.yaml", dest / f"recipe-{label}.yaml")
    return summary
