"""mechmerge: model merging guided by mechanistic (Weight Patching) scores.

Pipeline, one folder a stage:
    models/    load checkpoints, check architectures, discover units, stream tensors
    probes/    probe sets (JSONL) tokenized with exact response positions
    patching/  Weight Patching engine: exact, attribution, hybrid scores
    scores/    the scores JSON format
    recipe/    strategies that turn scores into per-module mergekit recipes
    merge/     run mergekit, write model cards, publish
    evaluate/  generation-based evaluation and the comparison harness
    analysis/  track (circuits across checkpoints), conflict, agreement of two scorings
    report/    heatmaps, interval and track plots
    zoo/       the embedded tiny model zoo used by the demo and the tests
    cli/       one module per command, imported only when it runs
"""

__version__ = "0.1.0"
