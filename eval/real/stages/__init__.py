"""Pipeline stages, one module each; importing this package registers them in order.

To add a stage: write `stages/NAME.py` with a function decorated by
`@stage("NAME", artifact="DIR", requires=(...))` and add NAME to `ORDER` below.
"""

import importlib

ORDER = ["import_model", "data", "finetune", "eval_experts", "score", "heatmaps", "recipe", "merge", "eval_merged", "compare", "report"]

for _module in ORDER:
    importlib.import_module(f"{__name__}.{_module}")
