#!/usr/bin/env bash
# Rebuilds the example recipes in this folder from the zoo that ships inside the package.
# Run from the repository root:   bash recipes/build.sh
# Model paths in the recipes are relative to the repository root, so
#   mergekit-yaml recipes/alpha-rev-shift.mix.yaml /tmp/merged
# runs from there with stock mergekit.
set -euo pipefail
cd "$(dirname "$0")/.."
Z=mechmerge/zoo/data/alpha
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
scores=recipes/alpha-rev-shift.scores.json
mechmerge score --base $Z/base \
  --expert rev=$Z/experts/rev --probes rev=$Z/probes/rev.score.jsonl \
  --expert shift=$Z/experts/shift --probes shift=$Z/probes/shift.score.jsonl \
  --out $scores --force --no-progress
# the default: `mix` calibrated on the scoring probes
mechmerge recipe $scores --out recipes/alpha-rev-shift.mix.yaml --force --no-progress
# each expert keeps its 8 best units at full weight, the rest at a quarter; TIES underneath
mechmerge recipe $scores --out recipes/alpha-rev-shift.topk-ties.yaml --strategy topk \
  --param k=8 --param background=0.25 --method ties --method-param density=0.5 --force --no-progress
# the baseline the guided ones are measured against: plain task arithmetic, lambda 1
mechmerge recipe $scores --out recipes/alpha-rev-shift.uniform.yaml --strategy uniform \
  --param scale=1.0 --force --no-progress
