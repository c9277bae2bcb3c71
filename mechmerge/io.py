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
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    """A finished directory and everything in it readable like any other output (files made
    through tempfile, and some that libraries write, are private). Only private entries (no
    group or other bits) are widened, to the umask's permissions; symbolic links are left alone."""
    for root, dirs, files in os.walk(path):
        for name, directory in [(d, True) for d in dirs] + [(f, False) for f in files]:
            f = Path(root) / name
            if not f.is_symlink() and not f.stat().st_mode & 0o077:
                _public(f, directory)
    _public(path, directory=True)


def _real(path: str | Path) -> Path:
    """Where `path` leads: absolute, symbolic links followed, whether or not it exists."""
    return Path(os.path.realpath(path))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


# Files of a model folder an output file must not replace (a results JSON beside them is fine)
MODEL_FILE = re.compile(r"(\.(safetensors|bin|pt|pth|gguf|model)$)|^(config|generation_config|tokenizer|"
                        r"tokenizer_config|special_tokens_map|added_tokens|vocab|merges|chat_template|"
                        r"model\.safetensors\.index|pytorch_model\.bin\.index)\.(json|txt|jinja)$")


def check_inputs(path: str | Path, inputs: Iterable[Any], what: str = "output", replaced: bool = True,
                 directory: bool = True) -> None:
    """Refuse an output that is one of the run's inputs, holds one (when the output is
    `replaced` as a whole, that input would be deleted), or lies inside an input directory (a
    model folder) as a directory or as one of the model's own files: the run would overwrite
    or pollute what it reads (`eval --json merged/eval.json` is fine). Inputs that do not
    exist here (Hub ids) are skipped; paths are compared after following symbolic links,
    nothing is read."""
    out = _real(path)
    for i in inputs:
        if i is None or str(i) == "":
            continue
        src = Path(str(i)).expanduser()
        if not src.exists():
            continue
        real = _real(src)
        if out == real:
            problem = f"is the input {str(i)!r}"
        elif replaced and _within(real, out):
            problem = f"holds the input {str(i)!r}; replacing it would delete that input"
        elif src.is_dir() and _within(out, real) and (directory or MODEL_FILE.search(out.name)):
            problem = f"lies inside the input {str(i)!r}"
        else:
            continue
        raise UserError(f"{what} {str(path)!r} {problem}; write it somewhere else")


def _refuse_working_dirs(p: Path, what: str) -> None:
    """An output directory is replaced as a whole when done: never the current directory, the
    home directory or a folder holding either (`--out .`, `--out ..`, `--out ~`)."""
    real = _real(p)
    for where, name in ((Path.cwd, "the current directory"), (Path.home, "your home directory")):
        try:
            d = _real(where())
        except (OSError, RuntimeError, KeyError):
            continue
        if _within(d, real):
            which = name if d == real else f"a folder holding {name}"
            raise UserError(f"{what} {str(p)!r} is {which}: an output directory is replaced as a whole; "
                            "give a new folder (one below it, for instance)")


def check_output(path: str | Path, force: bool, what: str = "output", directory: bool = False,
                 inputs: Iterable[Any] = (), looks_like: str = "") -> Path:
    """Refuse to overwrite without --force, or a file where a directory goes (or the reverse,
    which --force cannot fix), or an output that is, holds or lies inside one of `inputs`
    (paths of the models, probes, scores and recipes the run reads; see check_inputs);
    check the parent directory is writable.

    A directory output is replaced as a whole: never the current or home directory, and
    under --force only a folder holding the file `looks_like` (e.g. config.json: an earlier
    model), so that a mistyped --out does not delete someone's folder. A directory output
    behind a symbolic link is written where the link points (atomic_dir), so it is checked
    there."""
    p = Path(path)
    if directory:
        if p.is_symlink() and os.path.islink(os.path.realpath(p)):
            raise UserError(f"{what} {str(p)!r} is a symbolic link that leads nowhere (a loop); remove it or "
                            "choose another path")
        _refuse_working_dirs(p, what)
    if directory and p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a file, not a directory; choose another path")
    if not directory and p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a directory; give a file path")
    check_inputs(p, inputs, what, directory=directory)
    if p.exists() and not (p.is_dir() and not any(p.iterdir())):
        if not force:
            raise UserError(f"{what} {str(p)!r} already exists; pass --force to overwrite")
        if directory and looks_like and not (p / looks_like).is_file():
            raise UserError(f"{what} {str(p)!r} is not empty and is not an earlier output (it has no {looks_like}), "
                            "so --force will not replace it; give a new or empty folder, or empty it yourself")
    parent = _real(p).parent if directory else (p.parent if str(p.parent) else Path("."))
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


def _host() -> str:
    """This machine's name as it goes into a temporary directory's name (no dots, no slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname() or "host")


def _remove(path: Path) -> None:
    """Remove a file, a symbolic link (not what it points to) or a directory tree, if there."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        return True
    return True


def clean_stale_partials(path: Path, note=None) -> None:
    """Remove the unfinished builds of output `path` that a killed run left beside it
    (`.NAME.HOST.PID.XXXXXXXX.partial`, often a full model copy) when their process is gone.

    Only directories named exactly so for this output name are touched, and only those of
    this machine (a PID says nothing about another host's processes on a shared disk); a
    partial whose process still runs is another run's, and left alone. Older names without
    host and PID (`.NAME.XXXXXXXX.partial`) and other hosts' partials are only mentioned."""
    note = note or (lambda msg: print(f"note: {msg}", file=sys.stderr))
    name = re.escape(path.name)
    # also the partial of an output built inside this output's own partial (a pipeline stage that
    # imports into its temporary folder): `..NAME.H.P.x.partial.H.P.y.partial`, by its last H.P
    ours = re.compile(rf"^\.+{name}\.(?:.*\.partial\.)?([A-Za-z0-9_-]+)\.(\d+)\.[a-z0-9_]{{8}}\.partial$")
    legacy = re.compile(rf"^\.{name}\.[a-z0-9_]{{8}}\.partial$")
    host = _host()
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for d in entries:
        if d.is_symlink() or not d.is_dir():
            continue
        m = ours.match(d.name)
        if m and m.group(1) == host and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            shutil.rmtree(d, ignore_errors=True)
            note(f"removed {str(d)!r}, the unfinished output of an interrupted run (process {m.group(2)})")
        elif (m and m.group(1) != host) or legacy.match(d.name):
            note(f"{str(d)!r} looks like the unfinished output of an interrupted run; delete it if no run "
                 f"is still writing {str(path)!r}")


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; move it into place only on success.

    An output behind a symbolic link is built where the link points (the link stays and
    leads to the new directory). The finished directory is made readable (public_tree).
    Unfinished builds of the same output left by killed runs are removed first
    (clean_stale_partials)."""
    p = _real(path)
    if not p.name or p == p.parent:
        raise UserError(f"cannot write an output directory at {str(path)!r}")
    clean_stale_partials(p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.{_host()}.{os.getpid()}.", suffix=".partial", dir=p.parent))
    _public(tmp, directory=True)
    try:
        yield tmp
        public_tree(tmp)
        if p.exists():
            if not force and any(p.iterdir()):
                raise UserError(f"{str(path)!r} appeared while working; pass --force to overwrite")
            old = p.with_name(f".{p.name}.old")
            _remove(old)
            os.replace(p, old)
            os.replace(tmp, p)
            _remove(old)
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
