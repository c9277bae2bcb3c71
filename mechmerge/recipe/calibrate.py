"""--calibrate: pick a strategy's scale and parameters with cheap in-memory merges.

Each candidate recipe is merged in memory by mergekit's own engine, loaded into one
model instance, and scored on the probe sets recorded in the scores file (the scoring
split; never evaluation data). The objective is the mean over experts of the
recovery (m_e(merged) - m_e(B)) / (m_e(E) - m_e(B)), using the baselines stored in
the scores file, so 1.0 means every expert's probes are as likely under the merge as
under the expert itself.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Callable, Dict, List, Tuple

import torch
from tqdm import tqdm

from ..errors import UserError
from ..merge import engine as mk
from ..models.checkpoint import Checkpoint
from ..models.load import load_model, load_tokenizer, params_by_name, resolve_device, resolve_dtype
from ..patching.engine import measure_m
from ..patching.runner import LayerRunner
from ..probes import file_sha256, load_probes, make_batches, pad_id_of, tokenize_all


class ProbeScorer:
    """One model instance whose weights are overwritten by each candidate merge."""

    def __init__(self, data: Dict[str, Any], experts: List[str], device: str = "auto"):
        self.data = data
        self.experts = experts
        base = Checkpoint.open(data["base"], "base")
        dev = resolve_device(device)
        self.model = load_model(base, dev, resolve_dtype(data["options"].get("dtype", "auto"), dev))
        self.runner = LayerRunner(self.model, base.family)
        self.params = params_by_name(self.model)
        tok = load_tokenizer([base])
        opts = data["options"]
        self.batches = {}
        for e in experts:
            info = data["experts"][e]
            if file_sha256(info["probes"]) != info["probes_sha256"]:
                raise UserError(f"probes {info['probes']!r} of expert {e!r} changed since scoring; rescore first")
            tok_probes = tokenize_all(load_probes(info["probes"], limit=opts.get("max_probes")), tok, None, info["probes"])
            self.batches[e] = [b.to(dev) for b in make_batches(tok_probes, int(opts.get("batch_size", 8)), pad_id_of(tok))]

    @torch.no_grad()
    def load(self, tensors: Dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            if name in self.params:
                self.params[name].data.copy_(t)

    def recovery(self) -> Dict[str, float]:
        out = {}
        for e in self.experts:
            bl = self.data["experts"][e]["baseline"]
            lp, n = measure_m(self.runner, self.batches[e])
            out[e] = (lp / n - bl["base"]) / bl["gap"] if bl["gap"] else 0.0
        return out


def candidates(grid: Dict[str, List[Any]], fixed: Dict[str, Any]) -> List[Dict[str, Any]]:
    free = {k: v for k, v in grid.items() if k not in fixed}
    keys = list(free)
    return [{**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*(free[k] for k in keys))]


def calibrate(strategy, fixed: Dict[str, Any], config_for: Callable[[Dict[str, Any]], Tuple[Dict, Any]],
              data: Dict[str, Any], experts: List[str], opts) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    cands = candidates(strategy.grid, fixed)
    if len(cands) <= 1:
        return dict(fixed), []
    scorer = ProbeScorer(data, experts, opts.device)
    table = []
    for params in tqdm(cands, desc=f"calibrating {strategy.name}", file=sys.stderr, disable=not opts.progress):
        cfg, _ = config_for(params)
        scorer.load(mk.merge_in_memory(cfg, seed=opts.seed))
        rec = scorer.recovery()
        table.append({"params": params, "recovery": rec, "objective": sum(rec.values()) / len(rec)})
    best = max(table, key=lambda r: r["objective"])  # first best wins: deterministic
    return dict(best["params"]), table
