"""Make the comparison's paired test possible on a cache computed before the harness kept each
test instruction's answer: drop the test entries of two methods (the claim's default and its best
baseline) that lack them, so the next `--stages compare --redo compare` evaluates just those again
(dev entries stay, so the same candidates are chosen). With --check, after that run: how the
re-evaluated accuracies compare with the dropped ones (a different CPU's bfloat16 kernels can change a
few greedy answers).

    python eval/real_backfill_paired.py --model smollm2              # drop, keeping the old values
    OMP_NUM_THREADS=1 python -m eval.real.pipeline --model smollm2 --stages compare --redo compare
    python eval/real_backfill_paired.py --model smollm2 --check      # old vs new, per entry

`--again KEY` drops one entry whatever it holds: evaluated again on the same machine, it tells a
machine's own run-to-run variation from the CPU's (--check prints both the same way).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.real.runner import cache_root  # noqa: E402
from mechmerge.evaluate.cache import drop_entries  # noqa: E402
from mechmerge.io import atomic_write_text  # noqa: E402


def cache_file(model: str, root: str) -> Path:
    return Path(root).expanduser() / "real" / model / ".work" / "compare" / "run" / "cache.json"


def lacks_answers(entry: dict) -> bool:
    return any(r.get("accuracy") is not None and "correct" not in r for r in entry.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--methods", default="guided:mix,dare_ties", help="comma-separated (default: %(default)s)")
    ap.add_argument("--cache", default=str(cache_root().parent),
                    help="the folder holding real/ (default: $MECHMERGE_CACHE or ~/.cache/mechmerge)")
    ap.add_argument("--again", metavar="KEY", help="drop this one cache entry, answers or not")
    ap.add_argument("--against", metavar="FILE", help="with --check: the dropped values to compare with "
                    "(default: the last ones this script dropped, beside the cache)")
    ap.add_argument("--check", action="store_true", help="compare the re-evaluated entries with the dropped ones")
    a = ap.parse_args()
    path = cache_file(a.model, a.cache)
    kept = path.with_name("backfill-dropped.json")
    cache = json.loads(path.read_text())
    if a.check:
        old = json.loads(Path(a.against or kept).read_text())
        changed = total = 0
        for key, entry in old.items():
            new = cache.get(key)
            if new is None:
                print(f"{key}: not evaluated again yet")
                continue
            for t, r in entry.items():
                if r.get("accuracy") is None:
                    continue
                total += 1
                d = new[t]["accuracy"] - r["accuracy"]
                changed += d != 0
                print(f"{key} {t}: {r['accuracy']:.3f} -> {new[t]['accuracy']:.3f} ({d:+.3f}, n={r['n']})")
        print(f"{changed} of {total} task accuracies changed")
        return
    methods = a.methods.split(",")
    if a.again:
        if a.again not in cache:
            raise SystemExit(f"{a.again!r} is not in {path}")
        drop = {a.again: cache[a.again]}
    else:
        drop = {k: v for k, v in cache.items()
                if k.startswith("test|") and k.split("|")[2] in methods and lacks_answers(v)}
    if not drop:
        print(f"nothing to drop: every test entry of {', '.join(methods)} keeps its answers")
        return
    # the old values first, so that a kill in between loses none; --check compares with the values
    # dropped last (an entry dropped twice: its second values)
    previous = json.loads(kept.read_text()) if kept.is_file() else {}
    atomic_write_text(kept, json.dumps({**previous, **drop}, indent=0, sort_keys=True))
    drop_entries(path, lambda k, v: k not in drop)
    what = a.again if a.again else f"{len(drop)} test entries of {', '.join(methods)}"
    print(f"dropped {what} from {path} (old values in {kept})")


if __name__ == "__main__":
    main()
