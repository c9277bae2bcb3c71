"""`mechmerge agree REFERENCE OTHER`: how well one scoring reproduces another.

Made for checking cheap scores against exact ones on your own model before trusting
them (`--method attribution` or `hybrid` against `--method exact` on a few probes), or
two probe sets against each other. Per expert and score: the Spearman correlation over
the units that differ between base and expert (identical units score 0 in both and
would inflate it), how many of the reference's top K the other file also ranks in its
top K, and the largest absolute difference. Experts of REFERENCE that OTHER lacks are
skipped and listed (`missing` in the JSON, a line under the table, a note on stderr).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import UserError
from ..io import atomic_write_text, check_output, dumps
from ..options import Options, opt
from ..scores import SCORE_KEYS, read_scores
from .stats import spearman


@dataclass
class AgreeOptions(Options):
    reference: str = field(metadata=opt("Reference scores JSON (e.g. --method exact).", argument=True,
                                        metavar="REFERENCE"))
    other: str = field(metadata=opt("Scores JSON to check against it.", argument=True, metavar="OTHER"))
    top_k: int = field(default=10, metadata=opt("Size of the top sets compared.", min=1))
    out: Optional[str] = field(default=None, metadata=opt("Also write the table as JSON here."))
    force: bool = field(default=False, metadata=opt("Overwrite the output."))


def _vector(mods: Dict[str, Any], units: List[str], key: str) -> np.ndarray:
    return np.array([np.nan if mods[u].get(key) is None else mods[u][key] for u in units], dtype=float)


def compare_expert(ref: Dict[str, Any], other: Dict[str, Any], key: str, k: int) -> Optional[Dict[str, Any]]:
    """Agreement of one expert's `key` scores; None when either file lacks them."""
    units = [u for u in ref["modules"] if not ref["modules"][u].get("identical")]
    a, b = _vector(ref["modules"], units, key), _vector(other["modules"], units, key)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return None
    names = [u for u, keep in zip(units, ok) if keep]
    a, b = a[ok], b[ok]
    k = min(k, len(names))
    top_a = [names[i] for i in np.argsort(-a, kind="stable")[:k]]
    top_b = [names[i] for i in np.argsort(-b, kind="stable")[:k]]
    return {"units": len(names), "spearman": spearman(a, b) if len(names) > 1 else None, "k": k,
            "top_k_overlap": len(set(top_a) & set(top_b)), "max_abs_diff": float(np.abs(a - b).max()),
            "top_reference": top_a, "top_other": top_b}


def agree(opts: AgreeOptions) -> Dict[str, Any]:
    ref, other = read_scores(opts.reference), read_scores(opts.other)
    if list(ref["units"]) != list(other["units"]):
        raise UserError(f"{opts.other} scores other units than {opts.reference} (another model or granularity)")
    missing = [e for e in ref["experts"] if e not in other["experts"]]
    if len(missing) == len(ref["experts"]):
        raise UserError(f"no expert of {opts.reference} ({', '.join(ref['experts'])}) is in {opts.other}")
    out = (check_output(opts.out, opts.force, "agreement file", inputs=[opts.reference, opts.other])
           if opts.out else None)
    if missing:  # compared on the others; said, so a shorter table is not read as complete
        print(f"note: {opts.other} lacks expert(s) {', '.join(map(repr, missing))} of {opts.reference}; "
              "comparing the others only", file=sys.stderr)
    result: Dict[str, Any] = {"reference": {"file": opts.reference, "method": ref.get("method")},
                              "other": {"file": opts.other, "method": other.get("method")}, "experts": {},
                              "missing": missing}
    for name, e in ref["experts"].items():
        if name in other["experts"]:
            rows = {key: compare_expert(e, other["experts"][name], key, opts.top_k) for key in SCORE_KEYS}
            result["experts"][name] = {key: r for key, r in rows.items() if r is not None}
    if out is not None:
        atomic_write_text(out, dumps(result))
    return result


def table(result: Dict[str, Any]) -> str:
    lines = [f"{result['other']['file']} ({result['other']['method']}) against {result['reference']['file']} "
             f"({result['reference']['method']})",
             f"{'expert':<14} {'score':<9} {'units':>5} {'Spearman':>9} {'top-k':>7} {'max |diff|':>11}"]
    for name, rows in result["experts"].items():
        for key, r in rows.items():
            rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
            lines.append(f"{name:<14} {key:<9} {r['units']:>5} {rho:>9} "
                         f"{r['top_k_overlap']:>3}/{r['k']:<3} {r['max_abs_diff']:>11.2e}")
    if result.get("missing"):
        lines.append(f"not in {result['other']['file']}, not compared: {', '.join(result['missing'])}")
    return "\n".join(lines)
