#!/usr/bin/env bash
# Attribution and hybrid against exact Weight Patching on a real specialist, both directions, few probes
# (issue 6's agreement on the real models; the speed benchmark does the same for SmolLM2's uppercase).
# Needs the eval/real pipeline's finetune stage. Run from the repository root:
#   MODEL=gemma3-270m EXPERT=uppercase PROBES=4 bash eval/real_agree.sh
# Outputs: results/real-agree-$MODEL-$EXPERT/ (scores of each method, agreement.txt, times.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
MODEL=${MODEL:-gemma3-270m} EXPERT=${EXPERT:-uppercase} PROBES=${PROBES:-4}
R=${MECHMERGE_CACHE:-$HOME/.cache/mechmerge}/real/$MODEL
O=results/real-agree-$MODEL-$EXPERT
mkdir -p $O
: > $O/times.txt
for method in exact attribution hybrid; do
  s=$SECONDS
  mechmerge score --base $R/base --expert $EXPERT=$R/experts/$EXPERT --probes $EXPERT=$R/data/$EXPERT/score.jsonl \
    --method $method --max-probes $PROBES --out $O/$method.json --force --no-progress
  echo "[$((SECONDS - s)) s] $method, $PROBES probes, both directions" >> $O/times.txt
done
{ for method in attribution hybrid; do echo "## $method vs exact"; mechmerge agree $O/exact.json $O/$method.json; done; } \
  | tee $O/agreement.txt
