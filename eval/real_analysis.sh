#!/usr/bin/env bash
# Circuit dynamics, conflict and head-level merging on the real specialists (SmolLM2-135M by default, MODEL=gemma3-270m) (issue 7 on a real
# model). Needs the eval/real pipeline's finetune and score stages:
#   OMP_NUM_THREADS=1 python -m eval.real.pipeline --model smollm2 --stages score
# Run from the repository root:  bash eval/real_analysis.sh     Outputs: results/real-analysis/  (~56 min, 1 CPU thread)
# Sections can be run alone, e.g. `bash eval/real_analysis.sh controls` (track conflict heads strategies controls;
# controls and strategies need heads' modules.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # eval.real.metrics
# MODEL=gemma3-270m runs the same on the Gemma specialists (outputs: results/real-analysis-gemma3-270m/)
MODEL=${MODEL:-smollm2}
R=${MECHMERGE_CACHE:-$HOME/.cache/mechmerge}/real/$MODEL
O=results/real-analysis$([ "$MODEL" = smollm2 ] || echo "-$MODEL")
mkdir -p $O
t() { local s=$SECONDS; "$@"; echo "[$((SECONDS - s)) s] ${*:1:2}" >> $O/times.txt; }
SECTIONS=${*:-track conflict heads strategies controls}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
[ $# -eq 0 ] && : > $O/times.txt
pairs() { for e in "$@"; do echo --expert $e=$R/experts/$e --probes $e=$R/data/$e/score.jsonl; done; }
evaluate() {  # recipe -> merged model -> eval JSON
  mechmerge merge $1 --out $O/.merged --force
  mechmerge eval $O/.merged --probes uppercase=$R/data/uppercase/dev.jsonl --probes json=$R/data/json/dev.jsonl \
    --metric uppercase=eval.real.metrics:uppercase --metric json=eval.real.metrics:json --max-new-tokens 96 \
    --base $R/base --json $2 --force --no-progress
}

if want track; then
# 1. track: the uppercase specialist at steps 33 and 67 of its 100 fine-tuning steps, and final. Exact scoring of
#    272 units x 3 checkpoints is ~35 min here, so hybrid (exact for each checkpoint's top units), 8 probes.
t mechmerge track --base $R/base --checkpoint step33=$R/experts/checkpoints/uppercase-step33 \
  --checkpoint step67=$R/experts/checkpoints/uppercase-step67 --checkpoint final=$R/experts/uppercase \
  --probes $R/data/uppercase/score.jsonl --method hybrid --max-probes 8 --out $O/track-uppercase.json --force --no-progress
mechmerge plot $O/track-uppercase.json --out $O
fi

if want conflict; then
# 2. conflict between the four specialists, from the score stage's hybrid scores (32 probes each), causal included
t mechmerge conflict $R/scores/scores.json --causal --out $O/conflict.json --force 2>&1 | tee $O/conflict.txt
fi

if want heads; then
# 3. head granularity (query heads; SmolLM2: 3 query heads per k/v head; Gemma-3-270M: 4 per its one k/v head) against
#    modules, uppercase + json, same strategy and parameters; evaluated on the 48 dev instructions of each by
#    greedy generation (96 new tokens) and the constraint's verifier (eval/real/metrics.py)
t mechmerge score --base $R/base $(pairs uppercase json) --granularity head --method hybrid --max-probes 8 \
  --out $O/heads.json --force --no-progress
t mechmerge score --base $R/base $(pairs uppercase json) --method hybrid --max-probes 8 --out $O/modules.json \
  --force --no-progress
mix=(--strategy mix --param scale=1.25 --param alpha=0.5)
mechmerge recipe $O/heads.json --out $O/heads-mix.yaml "${mix[@]}" --derive-dir $O/.derived --force
t evaluate $O/heads-mix.yaml $O/heads-mix.eval.json
mechmerge recipe $O/modules.json --out $O/modules-mix.yaml "${mix[@]}" --force
t evaluate $O/modules-mix.yaml $O/modules-mix.eval.json
fi

if want strategies; then
# 4. the conflict-aware strategy against plain topk (same k and background) and the uniform task-arithmetic
#    merge, on the same two specialists, module scores, same evaluation
for strat in "conflict --param k=16 --param background=0.25" "topk --param k=16 --param background=0.25" "uniform"; do
  name=${strat%% *}
  mechmerge recipe $O/modules.json --out $O/$name.yaml --strategy $strat --force
  t evaluate $O/$name.yaml $O/$name.eval.json
done
fi

if want controls; then
# 5. controls for the top-K selections of section 4: the same strategies and k with the units chosen at random
#    (seeded) and by task-vector magnitude (largest ||E - B|| per unit) instead of by score
for strat in "conflict --param k=16 --param background=0.25" "topk --param k=16 --param background=0.25"; do
  name=${strat%% *}
  for ctl in random magnitude; do
    mechmerge recipe $O/modules.json --out $O/$name-$ctl.yaml --strategy $strat --score $ctl --force
    t evaluate $O/$name-$ctl.yaml $O/$name-$ctl.eval.json
  done
done
fi
rm -rf $O/.merged $O/.derived
