"""`mechmerge compare --workers N` / `--shard I/N`: the combinations shared among processes that
fill one output folder's cache (every save merges under a lock, cache.py)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from ..errors import UserError


def shard_of(spec: str) -> Tuple[int, int]:
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise UserError(f"--shard {spec!r}: expected I/N with 1 <= I <= N, e.g. 1/2")
    return i, n


def _worker(opts, threads: int) -> None:
    from .compare import compare  # a fresh interpreter: import here, not at module load (a cycle)

    torch.set_num_threads(threads)
    compare(opts)


def run_workers(opts) -> None:
    """`opts.workers` shard processes over the same folder; returns when all have finished."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    threads = max(1, torch.get_num_threads() // opts.workers)
    procs = [ctx.Process(target=_worker, args=(dataclasses.replace(opts, workers=1, shard=f"{i}/{opts.workers}"),
                                                threads)) for i in range(1, opts.workers + 1)]
    try:
        for p in procs:
            p.start()
        # a worker that fails stops the others now, not after their whole shards
        while any(p.is_alive() for p in procs) and not any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                p.join(timeout=2)
    finally:  # interrupted or failed here: no worker may go on writing the cache behind the user's back
        stopped = []
        for i, p in enumerate(procs):
            if p.is_alive():
                p.terminate()
                p.join()
                stopped.append(i + 1)
    failed = [i + 1 for i, p in enumerate(procs) if p.exitcode != 0 and i + 1 not in stopped]
    if failed:
        also = f"; stopped {stopped}" if stopped else ""
        raise UserError(f"compare workers {failed} of {opts.workers} failed (their errors are above{also}); "
                        "finished candidates are cached: run again to resume")
