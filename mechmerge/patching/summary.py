"""The short table printed after scoring: each expert's top units."""

from __future__ import annotations

import sys
from typing import Any, Dict, TextIO


def top_units(expert: Dict[str, Any], key: str, k: int) -> list:
    rows = [(u, s[key]) for u, s in expert["modules"].items() if s.get(key) is not None]
    return sorted(rows, key=lambda r: -r[1])[:k]


def print_summary(data: Dict[str, Any], k: int = 5, file: TextIO = sys.stderr) -> None:
    for name, e in data["experts"].items():
        bl = e["baseline"]
        flag = "" if e["reliable"] else "   ** UNRELIABLE: expert not better than base **"
        print(f"\n{name}: m(B)={bl['base']:.4f} m(E)={bl['expert']:.4f} gap={bl['gap']:.4f} "
              f"anchor layer {bl['anchor_layer']}{flag}", file=file)
        key = "patch_in" if "patch_in" in data["directions"] else "knockout"
        other = "knockout" if key == "patch_in" else "patch_in"
        print(f"  {'unit':<44} {key:>9} {other:>9} {'anchor':>8}", file=file)
        for u, v in top_units(e, key, k):
            s = e["modules"][u]
            o = s.get(other)
            a = s.get("anchor")
            print(f"  {u:<44} {v:>9.4f} {'' if o is None else f'{o:.4f}':>9} {'' if a is None else f'{a:.4f}':>8}",
                  file=file)
