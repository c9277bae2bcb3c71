"""Command line of the real-model pipeline; see `eval/real/runner.py` for how stages work.

    python -m eval.real.pipeline --model smollm2                  # every stage, skipping what is done
    python -m eval.real.pipeline --model smollm2 --stages import,data
    python -m eval.real.pipeline --list
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

from mechmerge.errors import UserError

from .models import MODELS
from . import store as stored
from .artifacts import REPO
from .runner import STAGES, Context, StageStopped, cache_root, parse_sets, run, state

STORE = REPO / "eval" / "real" / "store"


def pick_threads(arg: str) -> int:
    """Threads for torch. On a shared machine, asking for more threads than idle cores is far
    worse than asking for fewer: every parallel op waits at its barrier for the thread that was
    descheduled (measured here: a SmolLM2 training step 9 s with 1 thread, 47 s with 2, while
    another process kept one of the 2 cores busy; greedy generation 113 vs 18 tokens/s)."""
    import torch

    cores = os.cpu_count() or 1
    if arg == "auto":
        n = max(1, min(cores, cores - round(os.getloadavg()[0])))
    else:
        try:
            n = int(arg)
        except ValueError:
            raise UserError(f"--threads expects auto or a number, got {arg!r}") from None
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def main(argv: Sequence[str] | None = None) -> int:
    importlib.import_module(f"{__package__}.stages")  # registers the stages

    ap = argparse.ArgumentParser(prog="python -m eval.real.pipeline",
                                 description="Real-model pipeline: cached, resumable stages.")
    ap.add_argument("--model", default="smollm2", help=f"one of: {', '.join(MODELS.names())}")
    ap.add_argument("--stages", default="all",
                    help="comma-separated stages to run (with missing requirements); all: every stage, in order")
    ap.add_argument("--redo", default="", help="comma-separated stages to rebuild even if complete")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="a stage parameter")
    ap.add_argument("--cache", default=None,
                    help="cache root (default: $MECHMERGE_CACHE/real or ~/.cache/mechmerge/real)")
    ap.add_argument("--store", default=str(STORE),
                    help="the committed store that stages are kept in and restored from (store.py); "
                         "'none' to neither read nor write it")
    ap.add_argument("--nice", type=int, default=10, help="niceness added to this process (shared CPUs)")
    ap.add_argument("--threads", default="auto",
                    help="torch threads; auto: the cores other processes leave idle (1-minute load), at least 1")
    ap.add_argument("--list", action="store_true", help="list models and stages with their state, then exit")
    args = ap.parse_args(argv)
    try:
        spec = MODELS.get(args.model)
        root = (Path(args.cache).expanduser() if args.cache else cache_root()) / spec.name
        store = None if args.store.lower() == "none" else Path(args.store).expanduser() / spec.name
        ctx = Context(spec, root, parse_sets(args.set), log=lambda m: print(m, flush=True), store=store)
        if args.list:
            print(f"models: {', '.join(MODELS.names())}\nstages for {spec.name} under {root}:")
            for name in STAGES.names():
                st = STAGES.get(name)
                req = f" (needs {', '.join(st.requires)})" if st.requires else ""
                kept = "stored" if store is not None and stored.manifest(store, name) else ""
                print(f"  {name:<12} {state(ctx, name):<9} {kept:<7} {st.doc}{req}")
            return 0
        if args.nice:
            os.nice(args.nice)
        ctx.threads = pick_threads(args.threads)
        ctx.log(f"torch threads: {ctx.threads} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        names = STAGES.names() if args.stages == "all" else [s for s in args.stages.split(",") if s]
        redo = [s for s in args.redo.split(",") if s]
        run(ctx, names, redo)
    except StageStopped as e:
        print(e, flush=True)
    except KeyboardInterrupt:
        # Ctrl-C is the normal way to stop a long stage; the runner has already kept its work
        # (and counted its time), so a traceback here would only read like a crash.
        print("interrupted: finished work is kept in the cache; run the same command again to resume",
              file=sys.stderr, flush=True)
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
