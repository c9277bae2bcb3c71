"""Resident memory step by step through what exact scoring does before it patches.

    python eval/mem_steps.py --base BASE --expert EXPERT --probes PROBES.jsonl [--max-probes 8]

Prints VmHWM (high-water mark), VmRSS, RssAnon and RssFile in MB from /proc/self/status after
the imports, after loading (base, tokenizer, probes), during the baseline pass (every 10th block),
after it, after tracing every batch, after one replay and after one tail (lm_head and
log-softmax). Run it a few times: the spread between runs of the same code is what the heap does.
Linux only.
"""

from __future__ import annotations

import argparse


def status() -> str:
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                d[k] = int(v.split()[0]) // 1024
    return " ".join(f"{k} {v}" for k, v in d.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--expert", required=True)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--max-probes", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    import torch

    from mechmerge.patching import engine
    from mechmerge.patching.score import ScoreOptions, prepare

    print("imports   ", status(), flush=True)
    setup = prepare(ScoreOptions(base=args.base, experts={"x": args.expert}, probes={"x": args.probes}, out="",
                                 method="exact", max_probes=args.max_probes, batch_size=args.batch_size,
                                 progress=False))
    runner, batches = setup.runner, setup.batches["x"]
    print("loaded    ", status(), flush=True)

    def hook(i):
        def h(module, a, kw):
            if i % 10 == 0:
                print(f"  block {i:<3}", status(), flush=True)
        return h

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(runner.blocks)]
    with torch.no_grad():
        engine.measure_baseline(runner, batches)
        for h in handles:
            h.remove()
        print("baseline  ", status(), flush=True)
        traces = [runner.trace(b) for b in batches]
        print("traces    ", status(), f"(block inputs: {sum(t.nbytes() for t in traces) / 2 ** 20:.0f} MB)",
              flush=True)
        final, _ = runner.run_from(traces[0], 0)
        print("replay    ", status(), flush=True)
        runner.response_logprobs(final, traces[0].batch)
        print("tail      ", status(), flush=True)


if __name__ == "__main__":
    main()
