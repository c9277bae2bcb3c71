"""A read-only view of a scores file shaped for strategies: one score vector per expert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..errors import UserError, unknown

SCORE_KEYS = ("patch_in", "knockout", "anchor", "mean")
# Controls: the same strategy driven by something other than the mechanism.
CONTROL_KEYS = ("magnitude", "random")


@dataclass(frozen=True)
class UnitInfo:
    name: str
    layer: int
    kind: str
    category: str
    params: int


@dataclass
class ScoreView:
    """scores[e] is a float array over `units` (model order) for expert `e`.

    `key` says which score drove it: patch_in, knockout, anchor (units above the
    anchor layer fall back to patch_in) or mean (of patch_in and knockout, whichever
    were measured). Missing numbers are 0. The controls replace the scores with the
    task vector's norm per unit (magnitude) or with uniform noise (random, seeded).
    """

    units: List[UnitInfo]
    experts: List[str]
    scores: Dict[str, np.ndarray]
    key: str
    reliable: Dict[str, bool]
    data: dict

    @classmethod
    def from_scores(cls, data: dict, key: str = "patch_in", seed: int = 0) -> "ScoreView":
        if key not in SCORE_KEYS + CONTROL_KEYS:
            raise unknown("score", key, SCORE_KEYS + CONTROL_KEYS)
        units = [UnitInfo(n, u["layer"], u["kind"], u["category"], u.get("params", 0)) for n, u in data["units"].items()]
        names = list(data["experts"])
        if key == "magnitude":
            from .taskvectors import magnitudes

            scores = magnitudes(data, names)
        elif key == "random":
            rng = np.random.default_rng(seed)
            scores = {n: rng.random(len(units)) for n in names}
        else:
            scores = {n: np.array([_pick(data["experts"][n]["modules"][u.name], key) for u in units], dtype=np.float64)
                      for n in names}
        return cls(units, names, scores, key, {n: bool(e.get("reliable", True)) for n, e in data["experts"].items()},
                   data)

    def cosines(self) -> np.ndarray:
        """[units, experts, experts] cosine of the experts' task vectors on each unit."""
        from .taskvectors import cosines

        return cosines(self.data, self.experts)

    def matrix(self) -> np.ndarray:
        """[experts, units]"""
        return np.stack([self.scores[e] for e in self.experts])

    def subset(self, experts: List[str]) -> "ScoreView":
        for i, e in enumerate(experts):
            if e not in self.scores:
                raise unknown("expert", e, self.experts)
            if e in experts[:i]:
                raise UserError(f"--expert {e!r} is given twice")
        return ScoreView(self.units, list(experts), {e: self.scores[e] for e in experts}, self.key,
                         {e: self.reliable[e] for e in experts}, self.data)


def _pick(s: dict, key: str) -> float:
    def val(k):
        v = s.get(k)
        return None if v is None else float(v)

    if key == "mean":
        vals = [v for v in (val("patch_in"), val("knockout")) if v is not None]
        return float(np.mean(vals)) if vals else 0.0
    if key == "anchor":
        v = val("anchor")
        if v is None:
            v = val("patch_in")
        return 0.0 if v is None else v
    v = val(key)
    return 0.0 if v is None else v
