"""The embedded model zoo: a tiny base model, specialists fine-tuned from it, probe sets.

`locate("alpha")` gives the zoo directory: the copy shipped inside the package if there
is one, else a build cached under $MECHMERGE_CACHE/zoo/<name> (default
~/.cache/mechmerge/zoo/<name>), built on first use. The helpers read its manifest
(zoo.json; see `build.py` for the layout) and return full paths, not the
manifest's relative ones.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict

from ..errors import UserError, unknown

SHIPPED = Path(__file__).parent / "data"
MANIFEST = "zoo.json"


def cache_dir(name: str) -> Path:
    root = os.environ.get("MECHMERGE_CACHE") or Path.home() / ".cache" / "mechmerge"
    return Path(root) / "zoo" / name


def locate(name: str = "alpha", build: bool = True) -> Path:
    """The directory of zoo `name`: shipped, else cached, else built into the cache now."""
    for path in (SHIPPED / name, cache_dir(name)):
        if (path / MANIFEST).is_file():
            return path
    from .build import ZOOS, build_zoo

    if name not in ZOOS:
        raise unknown("zoo", name, ZOOS)
    path = cache_dir(name)
    if not build:
        raise UserError(f"zoo {name!r} is not built; run `mechmerge zoo --name {name}`")
    print(f"mechmerge: zoo {name!r} is not built yet; building it into {path} (a few minutes, once)",
          file=sys.stderr)
    return build_zoo(name, path, force=True)


def manifest(zoo: str | Path) -> Dict[str, Any]:
    """The parsed zoo.json of a zoo directory (or of the zoo named `zoo`)."""
    path = _dir(zoo) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{str(path)!r} not found: not a zoo directory") from None


def base(zoo: str | Path = "alpha") -> Path:
    return _dir(zoo) / manifest(zoo)["base"]


def experts(zoo: str | Path = "alpha") -> Dict[str, Path]:
    """Specialist skill -> expert model directory."""
    root = _dir(zoo)
    return {s: root / rel for s, rel in manifest(zoo)["experts"].items()}


def probe_files(zoo: str | Path = "alpha", split: str = "test") -> Dict[str, Path]:
    """Skill -> probes file of `split` (score, dev or test), for general and specialist skills."""
    root = _dir(zoo)
    out = {}
    for s, info in manifest(zoo)["skills"].items():
        if split not in info["probes"]:
            raise UserError(f"zoo has no {split!r} split; splits: {', '.join(info['probes'])}")
        out[s] = root / info["probes"][split]
    return out


def checkpoints(zoo: str | Path = "alpha") -> Dict[str, Dict[int, Path]]:
    """Tracked specialist -> {training step: checkpoint directory}, in step order."""
    root = _dir(zoo)
    return {s: {int(k): root / v for k, v in sorted(steps.items(), key=lambda kv: int(kv[0]))}
            for s, steps in manifest(zoo)["checkpoints"].items()}


def _dir(zoo: str | Path) -> Path:
    """A zoo directory from a path, or from a zoo name (located, and built if needed)."""
    if isinstance(zoo, Path) or os.sep in zoo or (Path(zoo) / MANIFEST).is_file():
        return Path(zoo)
    return locate(zoo)
