"""The scores file: format "mechmerge.scores", version 1.

    {
      "format": "mechmerge.scores", "version": 1, "mechmerge_version": "...",
      "base": PATH, "granularity": "module", "method": "exact",
      "options": {...the ScoreOptions used...},
      "units": {UNIT: {"layer": int, "kind": str, "category": str, "params": int}},   # model order
      "experts": {
        NAME: {
          "model": PATH, "probes": PATH, "probes_sha256": HEX, "n_probes": int, "n_tokens": int,
          "baseline": {"base": m(B), "expert": m(E), "gap": m(E)-m(B),
                       "anchor_layer": int, "anchor_base": a(B), "anchor_expert": a(E)},
          "reliable": bool, "warnings": [str],
          "modules": {UNIT: {"patch_in": float|null, "knockout": float|null, "anchor": float|null,
                             "identical": bool, "method": "exact"|"attribution"}}
        }
      }
    }

Floats carry 10 significant digits, units are in model order, no timestamps: the same
inputs give a byte-identical file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict

from ..errors import UserError
from ..io import read_json

FORMAT = "mechmerge.scores"
VERSION = 1
SCORE_KEYS = ("patch_in", "knockout", "anchor")


def read_scores(path: str | Path) -> Dict[str, Any]:
    """Load and validate a scores file; errors say what is wrong and where."""
    data = read_json(path, "scores file")
    validate_scores(data, str(path))
    return data


def validate_scores(data: Any, where: str = "scores") -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{where}: not a mechmerge scores file (format {got!r}, expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise UserError(
            f"{where}: scores format version {data.get('version')!r}; this mechmerge reads version {VERSION}"
        )
    experts = data.get("experts")
    if not isinstance(experts, dict) or not experts:
        raise UserError(f"{where}: no experts")
    units = data.get("units")
    if not isinstance(units, dict) or not units:
        raise UserError(f"{where}: no units")
    for name, e in experts.items():
        mods = e.get("modules") if isinstance(e, dict) else None
        if not isinstance(mods, dict):
            raise UserError(f"{where}: expert {name!r} has no 'modules'")
        missing = [u for u in units if u not in mods]
        if missing:
            raise UserError(f"{where}: expert {name!r} lacks unit {missing[0]!r}")
        for u, s in mods.items():
            for k in SCORE_KEYS:
                v = s.get(k)
                # json reads NaN and Infinity: a strategy would turn them into weights without a word
                if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                    raise UserError(f"{where}: experts.{name}.modules.{u}.{k} is {v!r}, expected a finite number "
                                    "or null")
