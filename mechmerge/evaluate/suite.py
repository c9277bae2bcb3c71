"""A comparison suite: base, experts and the probe splits the harness needs.

    {"name": ..., "base": DIR, "experts": {NAME: DIR},
     "splits": {"score": {TASK: FILE}, "dev": {TASK: FILE}, "test": {TASK: FILE}},
     "retention": {"dev": {TASK: FILE}, "test": {TASK: FILE}},   # general skills every merge must keep
     "quality": {"test": {TASK: FILE}},    # scored by log-probability only (e.g. the base's own answers)
     "metrics": {TASK: METRIC}, "max_new_tokens": N}

Expert NAME and its task share a name. The zoo's manifest converts to a suite;
the real-model pipeline writes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from ..errors import UserError


@dataclass
class Suite:
    name: str
    base: str
    experts: Dict[str, str]
    splits: Dict[str, Dict[str, str]]
    retention: Dict[str, Dict[str, str]] = field(default_factory=dict)
    quality: Dict[str, Dict[str, str]] = field(default_factory=dict)
    metrics: Dict[str, str] = field(default_factory=dict)
    max_new_tokens: int = 32

    def check(self) -> None:
        for split in ("score", "dev", "test"):
            missing = [e for e in self.experts if e not in self.splits.get(split, {})]
            if missing:
                raise UserError(f"suite {self.name!r}: expert {missing[0]!r} has no {split} probes")
        for path in [self.base, *self.experts.values()]:
            if not Path(path).is_dir():
                raise UserError(f"suite {self.name!r}: model {path!r} not found")
        for kind in (self.splits, self.retention, self.quality):
            for split, files in kind.items():
                for task, f in files.items():
                    if not Path(f).is_file():
                        raise UserError(f"suite {self.name!r}: {split} probes of {task!r}: file {f!r} not found")

    @classmethod
    def from_file(cls, path: str) -> "Suite":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"suite {path!r}: cannot read ({e})") from None
        if isinstance(d, dict) and d.get("format") == "mechmerge-zoo":
            return cls.from_zoo(p.parent)
        problem = _shape_problem(d)
        if problem:
            raise UserError(f"suite {path!r}: {problem} (a suite is {{name, base, experts: {{NAME: DIR}}, "
                            "splits: {score|dev|test: {TASK: FILE}}, ...}; see `mechmerge compare --help`)")
        root = p.parent

        def rel(x: str) -> str:  # "~/..." is the user's home; other relative paths, this file's folder
            q = Path(x).expanduser()
            return str(q if q.is_absolute() else root / q)

        return cls(
            name=d.get("name", p.stem), base=rel(d["base"]),
            experts={k: rel(v) for k, v in d["experts"].items()},
            splits={s: {k: rel(v) for k, v in m.items()} for s, m in d["splits"].items()},
            retention={s: {k: rel(v) for k, v in m.items()} for s, m in d.get("retention", {}).items()},
            quality={s: {k: rel(v) for k, v in m.items()} for s, m in d.get("quality", {}).items()},
            metrics=dict(d.get("metrics", {})), max_new_tokens=int(d.get("max_new_tokens", 32)),
        )

    @classmethod
    def from_zoo(cls, zoo_dir: Path) -> "Suite":
        from .. import zoo

        m = zoo.manifest(Path(zoo_dir))
        files = {split: zoo.probe_files(Path(zoo_dir), split) for split in ("score", "dev", "test")}
        specialists = list(m["specialists"])
        return cls(
            name=m["name"], base=str(zoo.base(Path(zoo_dir))),
            experts={s: str(p) for s, p in zoo.experts(Path(zoo_dir)).items()},
            splits={sp: {s: str(files[sp][s]) for s in specialists} for sp in files},
            retention={sp: {g: str(files[sp][g]) for g in m["general"]} for sp in ("dev", "test")},
            max_new_tokens=int(m.get("max_new_tokens", 24)),
        )


def _str_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _shape_problem(d) -> str:
    """What is wrong with a suite JSON's shape, or '' (paths are checked later, by `check`)."""
    if not isinstance(d, dict):
        return f"expected a JSON object, got {type(d).__name__}"
    if "format" in d:
        return f"this is a {d['format']!r} file, not a suite"
    for key in ("base", "experts", "splits"):
        if key not in d:
            return f"missing key {key!r}"
    if not isinstance(d["base"], str):
        return "'base' must be a model directory"
    if not _str_map(d["experts"]) or not d["experts"]:
        return "'experts' must map each expert's name to its model directory"
    for key in ("splits", "retention", "quality"):
        v = d.get(key, {})
        if not isinstance(v, dict) or not all(_str_map(m) for m in v.values()):
            return f"{key!r} must map each split to {{TASK: probe file}}"
    if not _str_map(d.get("metrics", {})):
        return "'metrics' must map each task to a metric name"
    n = d.get("max_new_tokens", 32)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"'max_new_tokens' must be a positive integer, got {n!r}"
    return ""
