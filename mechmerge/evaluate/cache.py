"""The comparison harness's cache of per-candidate results, and the protocol it records.

The cache's keys name only the combination, method and candidate, so the cache also
records the protocol it was computed under (models, probe files, scores, settings;
`protocol_of`); a run whose protocol differs refuses the cache instead of mixing
numbers from two protocols in one table. Several processes may fill one cache
(`--shard`, `--workers`): every save merges under a lock.
"""

from __future__ import annotations

import fcntl
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_text, file_sha256
from ..models.digest import cached_digests
from .suite import Suite

PROTOCOL = "__protocol__"  # the cache entry that records what the cached numbers depend on
# Protocol keys added after caches existed: a cache that lacks only these was computed before they
# were recorded, under the code of its time. It is taken to match (with a note) and records them from
# its next save on, so a long comparison resumes across the upgrade instead of starting over.
LATER_KEYS = ("search",)


def compatible(old: Dict[str, Any], new: Dict[str, Any]) -> bool:
    """Whether a cache recorded under `old` may be continued under `new`."""
    missing = set(new) - set(old)  # recorded now, not then
    return set(old) <= set(new) and missing <= set(LATER_KEYS) and all(old[k] == new[k] for k in old)


def protocol_of(suite: Suite, opts, scores_path: Path) -> Dict[str, Any]:
    """Everything a cached number depends on, readable so a mismatch can be named.

    Models are identified by their tensors (`models.digest`, hashed once per file and
    remembered in `digests.json` beside the cache), probe files and scores by content. So a
    cache moves with its files to another machine, and models rebuilt there bit for bit
    (specialists from committed adapters, say) continue it. Batch size and device are left
    out: they decide speed, not the protocol. Suite name and paths are left out too.
    """
    memo = scores_path.parent / "digests.json"

    def model(path: str) -> List[List[Any]]:
        return cached_digests(path, memo)

    files = {f"{kind}:{split}:{task}": file_sha256(f) for kind, d in
             (("split", suite.splits), ("retention", suite.retention), ("quality", suite.quality))
             for split, m in d.items() if split != "score" for task, f in sorted(m.items())}
    return {"mechmerge": __version__, "base": model(suite.base),
            "experts": {n: model(p) for n, p in sorted(suite.experts.items())}, "probes": files,
            "scores": file_sha256(scores_path), "metrics": dict(sorted(suite.metrics.items())),
            "max_new_tokens": suite.max_new_tokens, "candidates": opts.candidates, "seed": opts.seed,
            "max_dev_probes": opts.max_dev_probes, "max_test_probes": opts.max_test_probes,
            # recorded only when not float32, so caches from before the option match float32 runs
            **({"eval_dtype": opts.dtype} if opts.dtype not in ("auto", "float32") else {})}


def load_cache(path: Path, protocol: Dict[str, Any]) -> Dict[str, Any]:
    if not path.exists():
        return {PROTOCOL: protocol}
    try:
        cache = json.loads(path.read_text())
    except json.JSONDecodeError as e:  # written atomically, so only a hand edit gets here
        raise UserError(f"{path}: not valid JSON ({e}); delete it to start the comparison over") from None
    old = cache.get(PROTOCOL)
    if old is None:
        print(f"note: {path} records no protocol (written before the cache kept one); its results are "
              "taken to match this run's settings, which are recorded in it from now on", file=sys.stderr)
        cache[PROTOCOL] = protocol
        cache = save_cache(path, cache)
    elif old != protocol and compatible(old, protocol):
        later = ", ".join(sorted(set(protocol) - set(old)))
        print(f"note: {path} was written before mechmerge recorded {later} in the protocol; its results are "
              "taken to match this run's, which is recorded with the next result", file=sys.stderr)
        cache[PROTOCOL] = protocol
    elif old != protocol:
        diff = sorted(k for k in set(old) | set(protocol) if old.get(k) != protocol.get(k))
        raise UserError(f"{path} was computed under another protocol (differs in: {', '.join(diff)}); "
                        f"use another --out, or delete {path.name} to start over")
    return cache


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the cache file's lock: every writer read-modify-writes under it."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, cache: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(cache, indent=0, sort_keys=True))


def save_cache(path: Path, cache: Dict[str, Any]) -> Dict[str, Any]:
    """Write `cache` merged with what other processes on the same folder wrote since it was
    read (under a lock: read, add this process's entries, replace); returns the merged cache."""
    with _locked(path):
        if path.exists():
            theirs = json.loads(path.read_text())
            if not compatible(theirs.get(PROTOCOL, cache[PROTOCOL]), cache[PROTOCOL]):
                raise UserError(f"{path} was rewritten under another protocol by another run; "
                                "give each protocol its own --out")
            cache = {**theirs, **cache}
        _write(path, cache)
    return cache


def drop_entries(path: Path, keep: Callable[[str, Any], bool]) -> Dict[str, Any]:
    """Remove the entries `keep(key, entry)` rejects, so the next run computes them again; returns
    them. Under the same lock and atomic replace as `save_cache` (a kill never leaves half a file),
    but a harness running meanwhile still holds them in memory and writes them back: drop with
    none running."""
    with _locked(path):
        cache = json.loads(path.read_text())
        dropped = {k: v for k, v in cache.items() if not keep(k, v)}
        if dropped:
            _write(path, {k: v for k, v in cache.items() if k not in dropped})
    return dropped
