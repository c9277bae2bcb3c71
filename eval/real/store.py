"""The committed store: what a stage built, kept in the repository so it outlives the cache.

The cache (`~/.cache/mechmerge/real/`) lives on one machine; these runs take days of CPU,
longer than any one machine lasts. So every stage that declares `store=` copies its
manifest and its small files (probe sets, LoRA adapters, scores, evaluation JSON) to
`eval/real/store/<model>/<stage>/`, which is committed. When the cache lacks a stage whose
stored build was made from the same inputs (the requirements' `built_id`s, themselves
restored the same way), the runner restores it instead of recomputing: it copies the
files back, lets the stage rebuild what is too large to keep (`restore=`: the base model
from its GGUF, the specialists from their adapters) and checks the rebuilt weights against
the digests the manifest recorded. The restored artifact keeps the stored `built_id`, so the
stages after it restore in turn. A rebuild that differs (another dequantizer, say) is an
error that names the tensor digests, never a silent mix of two builds.

A stage's resumable scratch can be mirrored too (`mirror_work`): the comparison's
per-candidate cache is copied to the store as it grows, so hours of results survive.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from mechmerge.errors import UserError
from mechmerge.io import atomic_dir

MANIFEST = "stage.json"


def stage_dir(store: Path, stage: str) -> Path:
    return store / stage


def matching(root: Path, patterns: Iterable[str]) -> List[Path]:
    """Files under `root` whose relative path matches one of `patterns` (fnmatch; `*` crosses `/`)."""
    pats = list(patterns)
    return sorted(f for f in root.rglob("*") if f.is_file()
                  and any(fnmatch.fnmatch(str(f.relative_to(root)), p) for p in pats))


def save(store: Path, stage: str, artifact: Path, patterns: Iterable[str]) -> List[str]:
    """Replace the store's copy of `stage` with the artifact's manifest and matching files;
    returns their relative paths."""
    dest = stage_dir(store, stage)
    files = [f for f in matching(artifact, patterns) if f.name != MANIFEST]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest, force=True) as tmp:
        for f in files:
            target = tmp / f.relative_to(artifact)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        shutil.copyfile(artifact / MANIFEST, tmp / MANIFEST)
    return [str(f.relative_to(artifact)) for f in files]


def manifest(store: Path, stage: str) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((stage_dir(store, stage) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def copy_back(store: Path, stage: str, into: Path) -> None:
    """The stored files of `stage` (not its manifest) into the artifact being restored."""
    src = stage_dir(store, stage)
    for f in sorted(src.rglob("*")):
        if f.is_file() and f.relative_to(src) != Path(MANIFEST):
            target = into / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)


class RestoreMismatch(UserError):
    """A rebuilt artifact is not the stored one."""


class NotRestorable(Exception):
    """The stored build cannot be rebuilt here (the runner then runs the stage instead)."""


def check_digest(what: str, recorded: Optional[str], rebuilt: str) -> None:
    if recorded is not None and recorded != rebuilt:
        raise RestoreMismatch(f"{what}: rebuilt weights digest {rebuilt[:16]}... differs from the stored "
                              f"{recorded[:16]}...; the stored results downstream were made from other weights. "
                              "Pass --redo for this stage to build it afresh (and replace the store)")


def work_dir(store: Path, stage: str) -> Path:
    """Where a stage's mirrored scratch lives in the store (beside, not inside, its build)."""
    return store / f"{stage}.work"


STAMP = "stamp.json"  # the runner's record of the inputs a stage's scratch was made from


def seed_work(store: Path, stage: str, name: str, into: Path, stamp: Path) -> str:
    """Copy the store's mirror of scratch file `name` to `into` when `into` does not exist and
    the mirror was made from the inputs of `stamp` (this run's work stamp); then record that
    stamp beside the mirror, which this run's `Mirror` will fill. Returns what happened:
    "seeded", "kept" (`into` exists), "none" (no mirror) or "other inputs" (a stale mirror,
    left to be replaced)."""
    mirror = work_dir(store, stage)
    src = mirror / name
    ours = json.loads(stamp.read_text())["inputs"]
    try:
        theirs = json.loads((mirror / STAMP).read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        theirs = None
    what = "kept" if into.exists() else "none" if not src.is_file() else "other inputs" if theirs != ours else "seeded"
    mirror.mkdir(parents=True, exist_ok=True)
    if what == "seeded":
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, into)
    elif what == "kept":  # this run's scratch, already stamped with its inputs, replaces the mirror now
        shutil.copyfile(into, src)
    elif what == "other inputs":
        src.unlink()
    # the mirror never pairs one run's stamp with another run's scratch
    shutil.copyfile(stamp, mirror / STAMP)
    return what


class Mirror:
    """Copies `src` to `dest` whenever it changed, every `every` seconds in a background thread
    and once more on exit: long scratch (the comparison's cache, written after every result)
    reaches the store while the stage still runs, so a machine lost mid-run loses minutes."""

    def __init__(self, src: Path, dest: Path, every: float = 60.0):
        import threading

        self.src, self.dest, self.every = src, dest, every
        self._stop = threading.Event()
        self._seen: Optional[tuple] = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sync(self) -> bool:
        try:
            st = self.src.stat()
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) == self._seen:
            return False
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.dest.with_name(self.dest.name + ".tmp")
        shutil.copyfile(self.src, tmp)  # the source is replaced atomically by its writers
        tmp.replace(self.dest)
        self._seen = (st.st_size, st.st_mtime_ns)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sync()

    def __enter__(self) -> "Mirror":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()
