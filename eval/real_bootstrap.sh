#!/usr/bin/env bash
# Bootstrap intervals on the real specialists (SmolLM2-135M by default, MODEL=gemma3-270m) (issue 7 on a real model): are the top units'
# rankings separated by their probe-resampling intervals, or ties? Needs the eval/real pipeline's finetune
# stage:  OMP_NUM_THREADS=1 python -m eval.real.pipeline --model smollm2 --stages finetune
# Run from the repository root:  bash eval/real_bootstrap.sh    Outputs: results/real-analysis/bootstrap*
# (~40 min, 1 CPU thread, next to other jobs: the score stage's hybrid run over all 32 scoring probes, plus
# per-probe sums)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
# MODEL=gemma3-270m runs the same on the Gemma specialists (outputs: results/real-analysis-gemma3-270m/)
MODEL=${MODEL:-smollm2}
R=${MECHMERGE_CACHE:-$HOME/.cache/mechmerge}/real/$MODEL
O=results/real-analysis$([ "$MODEL" = smollm2 ] || echo "-$MODEL")
mkdir -p $O
pairs() { for e in "$@"; do echo --expert $e=$R/experts/$e --probes $e=$R/data/$e/score.jsonl; done; }
s=$SECONDS
mechmerge score --base $R/base $(pairs uppercase json end_phrase bullets) --method hybrid --bootstrap 1000 \
  --out $O/bootstrap.json --force --no-progress
echo "[$((SECONDS - s)) s] mechmerge score --bootstrap 1000" > $O/bootstrap-time.txt
mechmerge plot $O/bootstrap.json --out $O/bootstrap --top 15
python - $O/bootstrap.json <<'PY' | tee $O/bootstrap-ties.txt
import json, sys
from mechmerge.report.intervals import interval_rows
d = json.load(open(sys.argv[1]))
print("top-10 by score: neighbouring pairs whose intervals overlap (ties), and the top unit's interval")
for name, e in d["experts"].items():
    for key in ("patch_in", "knockout"):
        rows = interval_rows(e, key, 10)
        with_ci = [r for r in rows if r.interval]
        top = rows[0]
        iv = f"[{top.interval[0]:.3f}, {top.interval[1]:.3f}]" if top.interval else "(no interval)"
        print(f"{name:<11} {key:<9} ties {sum(r.tie_with_next for r in rows[:-1])}/{len(rows) - 1}, "
              f"{len(with_ci)}/10 measured exactly; top {top.unit} {top.value:.3f} {iv}, "
              f"separated from #2: {not top.tie_with_next}")
PY
