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

A scores file travels: `merge` copies it into the merged model and `publish` uploads it.
So what it says is data, never permission: an expert's name must be a plain folder name
(recipe writes derived experts under it), and the permissions it records (pickle,
remote code) are ignored by whoever rereads it (`ScoreOptions.from_record`).
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
        check_expert_name(name, where)
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


def check_expert_name(name: Any, where: str = "expert name") -> None:
    """An expert's name becomes a folder name (recipe's derived experts go to DIR/NAME), so
    it must name one folder inside DIR: `../../victim` would write beside it."""
    if not isinstance(name, str) or not name or name.startswith(".") or ".." in name \
            or any(c in name for c in ("/", "\\", "\0")):
        raise UserError(f"{where}: expert name {name!r} is not a plain folder name (empty, or with '/', '\\', "
                        "'..', NUL or a leading '.'); rename the expert")


UNIT_FIELDS = ("layer", "kind", "category", "params")


def unit_records(ckpt, units) -> Dict[str, Dict[str, Any]]:
    """The `units` entry a scores file has for `units` (models.units.Unit) of checkpoint `ckpt`."""
    out = {}
    for u in units:
        n = 0
        for s in u.slices:
            shape = list(ckpt.tensors[s.tensor].shape)
            if s.dim is not None:
                shape[s.dim] = s.stop - s.start
            n += math.prod(shape)
        out[u.name] = {"layer": u.layer, "kind": u.kind, "category": u.category, "params": n}
    return out


def check_units(data: Dict[str, Any], base_units: Dict[str, Dict[str, Any]], where: str, base: str) -> None:
    """Refuse scores measured on another model. The scores' units must be the base's
    (`unit_records`), in order, with the same layer, kind, category and size where the
    file records them; otherwise a strategy silently gives the units it has no score for
    the catch-all weight, or the merge fails on a tensor size after the work is done."""
    hint = ("; the scores were measured on another model: score this base, or point the scores' \"base\" at "
            "the model they were measured on")
    mine, theirs = list(data["units"]), list(base_units)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            raise UserError(f"{where}: unit {i} is {a!r} in the scores but {b!r} in the base {base!r}{hint}")
    if len(mine) != len(theirs):
        first = (f"the base {base!r} has unit {theirs[len(mine)]!r}, which the scores lack" if len(theirs) > len(mine)
                 else f"the scores have unit {mine[len(theirs)]!r}, which the base {base!r} lacks")
        raise UserError(f"{where}: {len(mine)} units in the scores, {len(theirs)} in the base: {first}{hint}")
    for name, rec in data["units"].items():
        for k in UNIT_FIELDS:
            if isinstance(rec, dict) and k in rec and rec[k] != base_units[name][k]:
                raise UserError(f"{where}: unit {name!r} has {k} {rec[k]!r} in the scores but {base_units[name][k]!r} "
                                f"in the base {base!r}{hint}")
