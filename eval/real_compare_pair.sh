#!/usr/bin/env bash
# mechmerge's comparison harness on one pair of the real SmolLM2-135M specialists (uppercase + json): the
# guided strategies mix (the default) and conflict, each with its random and magnitude-only controls, against
# task arithmetic, TIES and DARE-TIES tuned on the same dev split, every merge evaluated by generation and the
# constraints' verifiers. The pipeline's `compare` stage runs the same harness over all pairs and triples (hours
# here); this is its smallest complete instance. Needs the pipeline's finetune and score stages.
# Run from the repository root:  bash eval/real_compare_pair.sh   Outputs: results/real-compare/ (~1 h, 1 thread)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
R=${MECHMERGE_CACHE:-$HOME/.cache/mechmerge}/real/smollm2
O=results/real-compare
W=$R/.work/compare-pair  # the harness's cache (per-candidate results): a re-run resumes, or only re-reports
mkdir -p $O $W
# the score stage's hybrid scores (32 probes per specialist), so the harness does not rescore
[ -f $W/scores.json ] || cp $R/scores/scores.json $W/scores.json
python - "$R" "$O/suite.json" <<'PY'
import json, sys
from pathlib import Path
from eval.real import metrics
R, out = Path(sys.argv[1]).resolve(), sys.argv[2]
home = Path.home().resolve()
# "~/..." where the cache is under the home folder: the suite is committed with the results
where = (lambda p: "~/" + str(p.relative_to(home))) if R.is_relative_to(home) else str
pair = ["uppercase", "json"]
data = R / "data"
suite = {"name": "smollm2-ifeval-pair", "base": where(R / "base"),
         "experts": {n: where(R / "experts" / n) for n in pair},
         "splits": {s: {n: where(data / n / f"{s}.jsonl") for n in pair} for s in ("score", "dev", "test")},
         "quality": {"test": {"plain": where(data / "plain" / "test.jsonl")}},
         "metrics": {n: metrics.name_of(n) for n in pair}, "max_new_tokens": 96}
Path(out).write_text(json.dumps(suite, indent=1))
PY
s=$SECONDS
# the same protocol settings as the pipeline's compare stage (3 candidates, 16 dev and 32 test instructions)
mechmerge compare $O/suite.json --out $W --sizes 2 --candidates 3 --strategy mix --strategy conflict \
  --score-method hybrid --max-dev-probes 16 --max-test-probes 32 --device cpu --no-progress
echo "[$((SECONDS - s)) s] mechmerge compare (this run; cached candidates are not re-run)" > $O/time.txt
cp $W/results.md $W/results.json $W/results.png $O/
