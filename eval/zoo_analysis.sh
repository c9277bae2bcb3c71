#!/usr/bin/env bash
# Circuit dynamics, conflict and head-level merging on the shipped zoo (alpha); ~2 min on CPU.
# Run from the repository root:  bash eval/zoo_analysis.sh     Outputs: results/zoo-analysis/
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
Z=mechmerge/zoo/data/alpha
O=results/zoo-analysis
mkdir -p $O
pairs() { for e in "$@"; do echo --expert $e=$Z/experts/$e --probes $e=$Z/probes/$e.score.jsonl; done; }

# 1. track: the rev specialist's checkpoints during fine-tuning
ck=(); for c in $(ls $Z/checkpoints/rev | sort -t- -k2 -n); do ck+=(--checkpoint $c=$Z/checkpoints/rev/$c); done
mechmerge track --base $Z/base "${ck[@]}" --checkpoint final=$Z/experts/rev --probes $Z/probes/rev.score.jsonl \
  --out $O/track-rev.json --force --no-progress
mechmerge plot $O/track-rev.json --out $O

# 2. module scores of all four experts with bootstrap intervals, heatmaps, and conflict between them
mechmerge score --base $Z/base $(pairs rev shift sort add) --bootstrap 200 --out $O/scores.json --force --no-progress
mechmerge plot $O/scores.json --out $O
mechmerge conflict $O/scores.json --out $O/conflict.json --force | tee $O/conflict.txt

# 3. head granularity vs module granularity, same strategy and parameters (mix, scale 1.25, alpha 0.5):
#    head weights are folded into derived experts (written to $O/.derived, removed at the end)
mechmerge score --base $Z/base $(pairs rev shift) --granularity head --out $O/heads.json --force --no-progress
evaluate() {  # recipe -> merged model -> eval JSON
  mechmerge merge $1 --out $O/.merged --force
  mechmerge eval $O/.merged --probes rev=$Z/probes/rev.test.jsonl --probes shift=$Z/probes/shift.test.jsonl \
    --base $Z/base --json $2 --force --no-progress
}
mix=(--strategy mix --param scale=1.25 --param alpha=0.5)
mechmerge recipe $O/heads.json --out $O/heads-mix.yaml "${mix[@]}" --derive-dir $O/.derived --force
evaluate $O/heads-mix.yaml $O/heads-mix.eval.json
mechmerge recipe $O/scores.json --expert rev --expert shift --out $O/modules-mix.yaml "${mix[@]}" --force
evaluate $O/modules-mix.yaml $O/modules-mix.eval.json

# 4. first-order scores against the exact ones of section 2, same probes: attribution, and hybrid (exact for
#    the top ceil(1.5 x 10) units of each first-order estimate, patch_in's and knockout's)
for m in attribution hybrid; do
  mechmerge score --base $Z/base $(pairs rev shift sort add) --method $m --out $O/scores-$m.json --force --no-progress
  mechmerge agree $O/scores.json $O/scores-$m.json | tee $O/agree-$m.txt
done
rm -rf $O/.merged $O/.derived
