"""What the real-model evaluation data can and cannot show: numbers behind the caveats in the
README's "Real models" section. Reads the pipeline's cache only (data, import and eval_experts
stages); no torch, a few seconds.

    python eval/real_data_check.py --model smollm2 [--max-new-tokens 96]

Prints, per model: how the `bullets` test split is spread over N and each model's pass rate per N;
how many test targets (the reference answers) are longer than the generation limit, per
constraint; how many of the base's plain answers (the quality measure's references) ended on their
own rather than at the data stage's length limit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.real.runner import cache_root  # noqa: E402


def rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="the evaluation's generation limit")
    args = ap.parse_args(argv)
    root = cache_root() / args.model
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "base" / "tokenizer.json"))
    data = root / "data"
    # the stage's artifact when it finished, else the per-model results its run keeps so far
    final = root / "eval_experts" / "results.json"
    if final.is_file():
        evals = json.loads(final.read_text())["results"]
    else:
        evals = {f.stem: json.loads(f.read_text())["results"] for f in sorted((root / ".work" / "eval_experts").glob("*.json"))
                 if f.name != "stamp.json"}

    test = rows(data / "bullets" / "test.jsonl")
    ns = [r["meta"]["kwargs"]["n"] for r in test]
    print(f"{args.model}: bullets test split, N of bullets asked: {dict(sorted(Counter(ns).items()))}")
    for label, res in evals.items():
        correct = res.get("bullets", {}).get("correct")
        if correct is None or len(correct) != len(ns):
            continue
        by_n = defaultdict(list)
        for n, c in zip(ns, correct):
            by_n[n].append(c)
        cells = ", ".join(f"N={n}: {sum(v)}/{len(v)}" for n, v in sorted(by_n.items()))
        print(f"  {label:<11} passes {cells}")

    print(f"test targets longer than the {args.max_new_tokens}-token generation limit (tokens of the answer):")
    for d in sorted(p for p in data.iterdir() if (p / "test.jsonl").is_file()):
        answers = [r["messages"][-1]["content"] if "messages" in r else r["response"] for r in rows(d / "test.jsonl")]
        lengths = sorted(len(tok.encode(a, add_special_tokens=False).ids) for a in answers)
        over = sum(n > args.max_new_tokens for n in lengths)
        print(f"  {d.name:<11} {over:>3}/{len(lengths)} over; median {lengths[len(lengths) // 2]}, max {lengths[-1]}")

    summary = json.loads((data / "stage.json").read_text())["summary"]
    print(f"base plain answers that ended on their own (the rest were cut at the data stage's limit): "
          f"{summary['answers_finished']:.3f}")


if __name__ == "__main__":
    main()
