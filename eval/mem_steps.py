"""Resident memory step by step through what exact scoring does before it patches.

    python eval/mem_steps.py --base BASE --expert EXPERT --probes PROBES.jsonl [--max-probes 8]

Runs the speed benchmark's `floor` steps (bench_speed.unpatched_steps) and prints VmHWM
(high-water mark), VmRSS, RssAnon and RssFile in MB from /proc/self/status after the imports,
after loading (base, tokenizer, probes), during the baseline pass (every 10th block), after it,
after tracing every batch, after one replay and after one tail (lm_head and log-softmax). Run it
a few times: the spread between runs of the same code is what the heap does. Linux only.
"""

from __future__ import annotations

import argparse
import importlib

from bench_speed import add_model_args, proc_status_mb, unpatched_steps  # this script's folder is on sys.path

KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status() -> str:
    return " ".join(f"{k} {v}" for k, v in proc_status_mb(KEYS).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    args = ap.parse_args()
    importlib.import_module("mechmerge.patching.score")  # torch, transformers: the imports' share is printed first
    print("imports   ", status(), flush=True)
    handles = []

    def block_hook(i):
        def hook(module, a, kw):
            if i % 10 == 0:
                print(f"  block {i:<3}", status(), flush=True)
        return hook

    def mark(label, runner, detail=""):
        print(f"{label:<10}", status(), detail, flush=True)
        if label == "loaded":  # watch the baseline pass block by block
            handles.extend(b.register_forward_pre_hook(block_hook(i), with_kwargs=True)
                           for i, b in enumerate(runner.blocks))
        elif label == "baseline":
            for h in handles:
                h.remove()

    unpatched_steps(args, mark)


if __name__ == "__main__":
    main()
