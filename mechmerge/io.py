"""Output files that are either complete or absent.

Every output is written under a temporary name in the destination's directory and
renamed into place when complete (rename is atomic on one filesystem), so a killed
run never leaves a file or directory that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

FLOAT_DIGITS = 10  # significant digits written for every float: byte-stable output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the usual
    permissions so outputs are not unreadable to other users of the machine."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def round_floats(obj: Any) -> Any:
    """Fixed float formatting: 10 significant digits; NaN/Inf become null."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{FLOAT_DIGITS}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(round_floats(obj), indent=1, ensure_ascii=False) + "\n"


def public_tree(path: Path) -> None:
    """A finished directory and the files directly in it readable like any other output (files
    made through tempfile are private)."""
    _public(path, directory=True)
    for f in path.iterdir():
        if f.is_file():
            _public(f, directory=False)


def check_output(path: str | Path, force: bool, what: str = "output", directory: bool = False) -> Path:
    """Refuse to overwrite without --force, or a file where a directory goes (or the reverse,
    which --force cannot fix); check the parent directory is writable."""
    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a file, not a directory; choose another path")
    if not directory and p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a directory; give a file path")
    if p.exists() and not force:
        if not (p.is_dir() and not any(p.iterdir())):
            raise UserError(f"{what} {str(p)!r} already exists; pass --force to overwrite")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create directory {str(parent)!r} for {what}: {e.strerror}") from None
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {str(p)!r}: {str(parent)!r} is not a directory")
    # Try it: permission bits say nothing for root or read-only mounts.
    try:
        fd, probe = tempfile.mkstemp(prefix=".mechmerge-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {what} {str(p)!r}: directory {str(parent)!r} is not writable ({e.strerror})") from None
    return p


def atomic_write_text(path: str | Path, text: str) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _public(Path(tmp), directory=False)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; move it into place only on success."""
    p = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent))
    _public(tmp, directory=True)
    try:
        yield tmp
        if p.exists():
            if not force and any(p.iterdir()):
                raise UserError(f"{str(p)!r} appeared while working; pass --force to overwrite")
            old = p.with_name(f".{p.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file a user pointed at: one-line UserErrors for a missing, unreadable or broken file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r} not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {str(p)!r}: cannot be read ({e})") from None


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (GGUF files and shards are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
