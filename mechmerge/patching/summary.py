"""The short table printed after scoring: each expert's top units (with bootstrap
intervals, and '=' where a unit's interval overlaps the next one's: a tie)."""

from __future__ import annotations

import sys
from typing import Any, Dict, TextIO


def top_units(expert: Dict[str, Any], key: str, k: int) -> list:
    rows = [(u, s[key]) for u, s in expert["modules"].items() if s.get(key) is not None]
    return sorted(rows, key=lambda r: -r[1])[:k]


def print_summary(data: Dict[str, Any], k: int = 5, file: TextIO = sys.stderr) -> None:
    from .bootstrap import ties

    for name, e in data["experts"].items():
        bl = e["baseline"]
        flag = "" if e["reliable"] else "   ** UNRELIABLE: expert not better than base **"
        print(f"\n{name}: m(B)={bl['base']:.4f} m(E)={bl['expert']:.4f} gap={bl['gap']:.4f} "
              f"anchor layer {bl['anchor_layer']}{flag}", file=file)
        key = "patch_in" if "patch_in" in data["directions"] else "knockout"
        other = "knockout" if key == "patch_in" else "patch_in"
        rows = top_units(e, key, k)
        ci = {u: s.get("ci", {}) for u, s in e["modules"].items()}
        tie = ties([u for u, _ in rows], ci, key) if "bootstrap" in e else [False] * len(rows)
        print(f"  {'unit':<44} {key:>9} {'':>17} {other:>9} {'anchor':>8}", file=file)
        for (u, v), t in zip(rows, tie):
            s = e["modules"][u]
            o, a = s.get(other), s.get("anchor")
            iv = ci[u].get(key)
            ci_txt = f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""
            print(f"  {u:<44} {v:>9.4f} {ci_txt:>17}{'=' if t else ' '}{'' if o is None else f'{o:.4f}':>9} "
                  f"{'' if a is None else f'{a:.4f}':>8}", file=file)
