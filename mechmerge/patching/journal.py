"""Journal of finished (expert, phase, unit, group) measurements, for --resume.

One JSON object a line, flushed after every job, next to the output file. The first
line fingerprints everything that decides the numbers (options that matter, model
files, probe hashes), so a journal is only reused for the same run. A line cut off by
a kill is ignored. Floats are stored with repr precision, so resumed sums are exactly
the floats an uninterrupted run adds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import UserError
from .engine import Measurement

Key = Tuple[str, str, str, int]  # expert, phase, unit, group


class Journal:
    def __init__(self, path: Path, fingerprint: str, resume: bool):
        self.path = path
        self.records: Dict[Key, Measurement] = {}
        if path.exists() and resume:
            self._load(fingerprint)
        elif path.exists():
            path.unlink()
        new = not path.exists()
        self._f = open(path, "a", encoding="utf-8")
        if new:
            self._write({"fingerprint": fingerprint})

    def _load(self, fingerprint: str) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            # the line being written when the run was killed: cut it, or the first record
            # appended now would be glued to it and lost at the next resume
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "r+", encoding="utf-8") as f:
                f.truncate(len(text.encode("utf-8")))
        lines = text.splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("fingerprint") != fingerprint:
            raise UserError(
                f"journal {str(self.path)!r} belongs to a run with other inputs or options; "
                "rerun without --resume to start over"
            )
        for line in lines[1:]:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when the run was killed
            self.records[(r["e"], r["p"], r["u"], r["g"])] = Measurement(
                r["lp"], r["n"], r["a"], _tup(r.get("lpp")), _tup(r.get("ap")))

    def _write(self, obj) -> None:
        self._f.write(json.dumps(obj) + "\n")
        self._f.flush()

    def get(self, expert: str, phase: str, unit: str, group: int) -> Optional[Measurement]:
        return self.records.get((expert, phase, unit, group))

    def add(self, expert: str, phase: str, unit: str, group: int, m: Measurement) -> None:
        self.records[(expert, phase, unit, group)] = m
        rec = {"e": expert, "p": phase, "u": unit, "g": group, "lp": m.lp_sum, "n": m.n, "a": m.anchor_sum}
        if m.lp_probe is not None:
            rec["lpp"], rec["ap"] = m.lp_probe, m.a_probe
        self._write(rec)

    def close(self, remove: bool) -> None:
        self._f.close()
        if remove:
            os.unlink(self.path)


def _tup(v):
    return None if v is None else tuple(v)
