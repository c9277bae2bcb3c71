"""Real-model pipeline: stages that cache their artifacts, skip what is done, and resume.

    python -m eval.real.pipeline --model smollm2 --stages import,data
    python -m eval.real.pipeline --model smollm2 --stages data --redo data --set data.n_train=100
    python -m eval.real.pipeline --list

(the command line is `pipeline.py`; this module is the registry and the runner.)

A stage is a function `fn(ctx, out) -> summary` registered with `@stage(name, artifact=...,
requires=...)` in a module of `eval/real/stages/`. The runner gives it `out`, a temporary
directory next to the artifact's final place (`mechmerge.io.atomic_dir`), writes the
returned summary to `out/stage.json` and renames the directory into place. So an artifact
either holds stage.json and is complete, or does not exist: a complete artifact is skipped,
a killed stage leaves nothing half-written. Scratch state a stage wants to survive a kill
(generation journals, training checkpoints) goes in `ctx.work(name)`.

stage.json names the build of each requirement it used; when a requirement is rebuilt
(`--redo NAME`), the stages after it are "stale" and are rebuilt when next asked for.

A stage declared with `store=` also copies its manifest and small files to the committed
store (`store.py`); a missing artifact whose stored build was made from the same inputs is
restored from there (with its built_id) instead of being recomputed.

Artifacts live under `$MECHMERGE_CACHE/real/<model>/` (default `~/.cache/mechmerge/real/`).
Stage parameters come from `--set STAGE.KEY=VALUE`; the ones a stage reads are recorded in
its stage.json, and a skipped stage whose record disagrees with the command line says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mechmerge.errors import UserError
from mechmerge.io import atomic_dir, atomic_write_text, dumps
from mechmerge.registry import Registry

from . import store as stored
from .models import ModelSpec

MANIFEST = "stage.json"


class StageStopped(UserError):
    """A stage stopped where it was asked to (an estimate, an interim table): its artifact stays
    incomplete, and the command line reports the message without calling it an error."""


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[["Context", Path], Dict[str, Any]]
    artifact: str  # directory name under the model's cache root
    requires: Tuple[str, ...]
    doc: str
    # Results kept in .work/<name> between runs (a resumed stage reuses them): stamped with the
    # requirements' built_ids and the stage's --set values, so they are never reused for others.
    stamp_work: bool = False
    volatile: Tuple[str, ...] = ()  # --set keys that change speed or output only, not results
    redo_clears: bool = True  # False: a cache that checks its own protocol survives --redo (re-rendering)
    # Files of the artifact (fnmatch patterns) kept in the committed store (store.py); None: not
    # stored, (): the manifest only. `restore(ctx, out)` rebuilds what the store does not hold.
    store: Optional[Tuple[str, ...]] = None
    restore: Optional[Callable[["Context", Path], None]] = None


STAGES: Registry[Stage] = Registry("stage")


def stage(name: str, artifact: str, requires: Sequence[str] = (), stamp_work: bool = False,
          volatile: Sequence[str] = (), redo_clears: bool = True, store: Optional[Sequence[str]] = None,
          restore: Optional[Callable[["Context", Path], None]] = None):
    """Register `fn(ctx, out) -> summary dict` as stage `name`, building `<root>/<artifact>`."""
    def deco(fn):
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""  # shown by --list
        STAGES.register(name)(Stage(name, fn, artifact, tuple(requires), doc, stamp_work, tuple(volatile),
                                    redo_clears, None if store is None else tuple(store), restore))
        return fn

    return deco


def cache_root() -> Path:
    return Path(os.environ.get("MECHMERGE_CACHE") or "~/.cache/mechmerge").expanduser() / "real"


@dataclass
class Context:
    model: ModelSpec
    root: Path  # cache_root()/<model name>
    params: Dict[str, str] = field(default_factory=dict)  # "stage.key" -> raw value from --set
    log: Callable[[str], None] = print
    used: Dict[str, Any] = field(default_factory=dict)  # params read by the running stage
    threads: int = 0  # torch threads the command line chose (0: left as torch set them)
    store: Optional[Path] = None  # the committed store of this model (store.py); None: not used

    def artifact(self, name: str) -> Path:
        return self.root / STAGES.get(name).artifact

    def work(self, name: str) -> Path:
        p = self.root / ".work" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def param(self, key: str, default: Any) -> Any:
        """`--set key=value` converted to the type of `default` (or the default)."""
        raw = self.params.get(key)
        if raw is None:
            value = default
        elif isinstance(default, bool):
            value = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)):
            try:
                value = type(default)(raw)
            except ValueError:
                raise UserError(f"--set {key}={raw}: expected {type(default).__name__}") from None
        else:
            value = raw
        self.used[key] = value
        return value


def manifest_of(path: Path) -> Dict[str, Any] | None:
    """The stage.json of an artifact, or None when the artifact is missing (or unreadable)."""
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def state(ctx: Context, name: str) -> str:
    """'missing', 'stale' (a requirement was rebuilt after it) or 'complete'."""
    m = manifest_of(ctx.artifact(name))
    if m is None:
        return "missing"
    for req in STAGES.get(name).requires:
        r = manifest_of(ctx.artifact(req))
        if r is None or m.get("inputs", {}).get(req) != r.get("built_id"):
            return "stale"
    return "complete"


def plan(names: Sequence[str], ctx: Context, redo: Sequence[str] = ()) -> List[str]:
    """Stages to run, requirements first, each once: the ones asked for, plus any requirement
    that is not complete or is redone. A stage whose requirement runs is rebuilt too."""
    order: List[str] = []

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        if name in chain:
            raise UserError(f"stage requirements form a cycle: {' -> '.join(chain + (name,))}")
        for req in STAGES.get(name).requires:
            if req not in order and (req in redo or state(ctx, req) != "complete"):
                visit(req, chain + (name,))
        if name not in order:
            order.append(name)

    for n in list(names) + [r for r in redo if r not in names]:
        visit(n, ())
    return order


def check_work(ctx: Context, st: Stage, inputs: Dict[str, str], fresh: bool) -> None:
    """Keep .work/<stage> only for the inputs and --set values it was computed with: --redo, or a
    requirement rebuilt since, clears it; other --set values than it was started with are refused
    (clearing hours of results over a typo would be worse than asking)."""
    work = ctx.root / ".work" / st.name
    stamp = {"inputs": inputs, "set": {k: v for k, v in sorted(ctx.params.items())
                                       if k.startswith(st.name + ".") and k.split(".", 1)[1] not in st.volatile}}
    f = work / "stamp.json"
    if work.is_dir():
        old = json.loads(f.read_text()) if f.is_file() else None
        # a stage whose cache checks its own protocol keeps it through --redo, and re-renders from it
        if (fresh and st.redo_clears) or (old is not None and old["inputs"] != inputs):
            ctx.log(f"[{st.name}] clearing {work}: " + ("--redo" if fresh else "a requirement was rebuilt since"))
            shutil.rmtree(work)
        elif old is not None and old["set"] != stamp["set"] and not fresh:
            raise UserError(f"{work} holds results computed with --set {_fmt_set(old['set'])}, not "
                            f"{_fmt_set(stamp['set'])}: pass the same values to resume, or --redo {st.name} "
                            "to start it over")
        elif old is None:
            ctx.log(f"[{st.name}] {work} predates work stamps: taken to match this run")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, dumps(stamp))


ELAPSED = "elapsed.json"


class Elapsed:
    """Seconds spent on a stage by earlier processes that stopped before it finished (kept in
    its work folder, so a --redo or a rebuilt requirement starts the count over). A process
    killed with SIGKILL cannot add its time; Ctrl-C, SIGINT and crashes do."""

    def __init__(self, path: Path):
        self.path = path
        d = json.loads(path.read_text()) if path.is_file() else {}
        self.seconds, self.processes = float(d.get("seconds", 0.0)), int(d.get("processes", 0))

    def add(self, seconds: float) -> None:
        if self.path.parent.is_dir():
            # read again: a second process on the same stage (an interim table) may have added since
            now = Elapsed(self.path)
            atomic_write_text(self.path, dumps({"seconds": now.seconds + seconds, "processes": now.processes + 1}))

    def clear(self) -> None:
        """The stage finished and its manifest holds the total: a later --redo that keeps the work
        folder (compare's) counts from zero."""
        self.path.unlink(missing_ok=True)


def _fmt_set(values: Dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "(none)"


def inputs_of(ctx: Context, st: Stage) -> Dict[str, str]:
    """The built_id of each requirement's artifact (all must exist)."""
    inputs = {}
    for req in st.requires:
        m = manifest_of(ctx.artifact(req))
        if m is None:
            raise UserError(f"stage {st.name!r} needs stage {req!r}, whose artifact {ctx.artifact(req)} is missing")
        inputs[req] = m["built_id"]
    return inputs


def restorable(ctx: Context, st: Stage) -> Optional[Dict[str, Any]]:
    """The store's manifest of `st` when it was built from the inputs the cache holds now and
    with the --set values asked for; None otherwise (said in the log when a build is there)."""
    if ctx.store is None or st.store is None:
        return None
    m = stored.manifest(ctx.store, st.name)
    if m is None:
        return None
    if m.get("inputs") != inputs_of(ctx, st):
        ctx.log(f"[{st.name}] the store's build ({m.get('built_id')}) was made from other inputs: not restored")
        return None
    recorded = m.get("params", {})
    differ = [k for k, v in ctx.params.items() if k.startswith(st.name + ".") and k.split(".", 1)[1] not in st.volatile
              and not same_value(recorded.get(k), v)]
    if differ:
        ctx.log(f"[{st.name}] the store's build used {', '.join(f'{k}={recorded.get(k)}' for k in differ)}: "
                "not restored")
        return None
    return m


def restore_stage(ctx: Context, st: Stage, m: Dict[str, Any]) -> Dict[str, Any]:
    """Rebuild the artifact of `st` from the store, keeping the stored manifest (and built_id)."""
    t0 = time.perf_counter()
    final = ctx.artifact(st.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    ctx.used = {}
    with atomic_dir(final, force=True) as tmp:
        stored.copy_back(ctx.store, st.name, tmp)
        if st.restore is not None:
            st.restore(ctx, tmp)
        manifest = {**m, "restored": {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                      "seconds": time.perf_counter() - t0}}
        atomic_write_text(tmp / MANIFEST, dumps(manifest))
    return manifest


def run_stage(ctx: Context, st: Stage, fresh: bool = False) -> Dict[str, Any]:
    inputs = inputs_of(ctx, st)
    if st.stamp_work:
        check_work(ctx, st, inputs, fresh)
    final = ctx.artifact(st.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    ctx.used = {}
    earlier = Elapsed(ctx.root / ".work" / st.name / ELAPSED) if st.stamp_work else None
    t0 = time.perf_counter()
    with atomic_dir(final, force=True) as tmp:
        try:
            summary = st.fn(ctx, tmp) or {}
        except StageStopped:  # an estimate or an interim table, not work towards the artifact
            raise
        except BaseException:  # Ctrl-C or a crash: the next process resumes, and its time adds up
            if earlier is not None:
                earlier.add(time.perf_counter() - t0)
            raise
        seconds = time.perf_counter() - t0
        manifest = {"stage": st.name, "model": ctx.model.name, "params": ctx.used, "inputs": inputs,
                    "threads": ctx.threads,
                    "built_id": f"{st.name}-{time.time_ns()}", "seconds": seconds,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary}
        if earlier is not None:
            manifest["all_processes"] = {"seconds": earlier.seconds + seconds, "processes": earlier.processes + 1}
        atomic_write_text(tmp / MANIFEST, dumps(manifest))
    if earlier is not None:
        earlier.clear()
    if ctx.store is not None and st.store is not None:
        files = stored.save(ctx.store, st.name, final, st.store)
        ctx.log(f"[{st.name}] stored {len(files)} file(s) and the manifest in {stored.stage_dir(ctx.store, st.name)}")
    return manifest


def same_value(recorded: Any, raw: str) -> bool:
    """Whether a value recorded in stage.json is what `--set` asks for (2 == 2.0, True == yes)."""
    if isinstance(recorded, bool):
        return recorded == (raw.lower() in ("1", "true", "yes", "on"))
    if isinstance(recorded, (int, float)):
        try:
            return float(raw) == float(recorded)
        except ValueError:
            return False
    return str(recorded).lower() == raw.lower()


def param_note(ctx: Context, name: str) -> str:
    """' (built with K=V; pass --redo NAME ...)' when --set asks for other values than were used."""
    recorded = (manifest_of(ctx.artifact(name)) or {}).get("params", {})
    differ = [k for k, v in ctx.params.items() if k.startswith(name + ".") and not same_value(recorded.get(k), v)]
    if not differ:
        return ""
    built = ", ".join(f"{k}={recorded.get(k)}" for k in differ)
    return f" (built with {built}; pass --redo {name} to rebuild)"


def run(ctx: Context, names: Sequence[str], redo: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Run `names` (and what they need), skipping complete artifacts; name -> manifest."""
    for n in list(names) + list(redo):
        STAGES.get(n)
    out: Dict[str, Dict[str, Any]] = {}
    order = plan(names, ctx, redo)
    for name in {k.split(".")[0] for k in ctx.params} - set(order):
        if state(ctx, name) == "complete":
            ctx.log(f"[{name}] complete, not rebuilt{param_note(ctx, name)}")
    for name in order:
        st = STAGES.get(name)
        path = ctx.artifact(name)
        now = state(ctx, name)
        if now == "complete" and name not in redo:
            ctx.log(f"[{name}] complete, skipped: {path}{param_note(ctx, name)}")
            out[name] = manifest_of(path)
            continue
        m = restorable(ctx, st) if name not in redo else None
        if m is not None:
            ctx.log(f"[{name}] restoring {m['built_id']} from {stored.stage_dir(ctx.store, name)}")
            try:
                out[name] = restore_stage(ctx, st, m)
                ctx.log(f"[{name}] restored in {out[name]['restored']['seconds']:.1f}s -> {path}")
                continue
            except stored.NotRestorable as e:
                ctx.log(f"[{name}] not restored: {e}")
        why = {"missing": "", "stale": " (a requirement was rebuilt)"}.get(now, " (--redo)")
        ctx.log(f"[{name}] {st.doc}{why}")
        out[name] = run_stage(ctx, st, fresh=name in redo)
        ctx.log(f"[{name}] done in {out[name]['seconds']:.1f}s -> {path}")
    return out


def parse_sets(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set expects STAGE.KEY=VALUE, got {item!r}")
        STAGES.get(key.split(".")[0])
        out[key] = value
    return out
