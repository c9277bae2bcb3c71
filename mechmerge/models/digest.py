"""What a model's weights are, as one hash: the same for the same tensors, however stored.

A file hash changes with the safetensors layout or metadata a library version writes; the
tensors are what a cached result depends on. Hashing is linear in the weights (about 1 s
per GB here), so `cached_digest` keeps each file's digest in a small JSON beside the
results that depend on it, keyed by the file's path, size and modification time, and
hashes again only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List

import torch

from ..io import atomic_write_text


def file_digest(path: Path) -> str:
    """sha256 over a safetensors file's tensors in name order: name, dtype, shape, bytes."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_digest(model_dir: str | Path) -> str:
    """One digest over every .safetensors file of a model dir (file names included)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no .safetensors files")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def cached_digests(model_dir: str | Path, memo: Path) -> List[List[str]]:
    """[[file name, digest], ...] of a model dir's weight files, reusing `memo`'s digests of
    files whose path, size and mtime are unchanged (and recording new ones there)."""
    try:
        known: Dict[str, list] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    out, changed = [], False
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        st = f.stat()
        key = str(f.resolve())
        rec = known.get(key)
        if not (rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns):
            rec = [st.st_size, st.st_mtime_ns, file_digest(f)]
            known[key], changed = rec, True
        out.append([f.name, rec[2]])
    if changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps(known, indent=0, sort_keys=True))
    return out
