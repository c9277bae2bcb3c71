"""--calibrate: pick a strategy's scale and parameters with cheap in-memory merges.

Each candidate recipe is merged in memory by mergekit's own engine, loaded into one
model instance, and scored on the probe sets recorded in the scores file (the scoring
split; never evaluation data). The objective is the mean over experts of one of:
sequence_accuracy (default): the share of probes whose every response token is the
merged model's argmax under teacher forcing, i.e. what greedy evaluation counts (up
to stopping); token_accuracy: the share of response tokens that are; recovery: of the mean
log-probability, (m_e(merged) - m_e(B)) / (m_e(E) - m_e(B)) with the scores file's
baselines. Log-probability rewards merges that make the reference likely without
making it the answer: on zoo alpha the harness's `mix` rose from 0.377 (recovery) to
0.426 (sequence accuracy) mean test accuracy (README, "Does guided merging beat uniform
merging?"). Ties are broken by the other measures in turn.
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
from ..models.load import load_model, load_tokenizer, overwrite_params, params_by_name, resolve_device, resolve_dtype
from ..patching.runner import LayerRunner
from ..io import file_sha256
from ..probes import load_probes, make_batches, pad_id_of, tokenize_all


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
        tok = load_tokenizer([base, *(Checkpoint.open(data["experts"][e]["model"], e) for e in experts)])
        opts = data["options"]
        self.batches = {}
        for e in experts:
            info = data["experts"][e]
            if file_sha256(info["probes"]) != info["probes_sha256"]:
                raise UserError(f"probes {info['probes']!r} of expert {e!r} changed since scoring; rescore first")
            tok_probes = tokenize_all(load_probes(info["probes"], limit=opts.get("max_probes")), tok, None, info["probes"])
            self.batches[e] = [b.to(dev) for b in make_batches(tok_probes, int(opts.get("batch_size", 8)), pad_id_of(tok))]

    def load(self, tensors: Dict[str, torch.Tensor]) -> None:
        overwrite_params(self.params, tensors.items())

    def measure(self) -> Dict[str, Dict[str, float]]:
        """Per expert, on its scoring probes (teacher forced): log-prob recovery
        (m − m(B)) / (m(E) − m(B)), token accuracy (share of response tokens that are the
        argmax) and sequence accuracy (share of probes whose every token is: the greedy
        answer, up to stopping)."""
        out = {}
        for e in self.experts:
            bl = self.data["experts"][e]["baseline"]
            lp_sum, n, hit_sum, seq_ok, n_probes = 0.0, 0, 0, 0, 0
            with torch.no_grad():
                for b in self.batches[e]:
                    tr = self.runner.trace(b, keep_inputs=False)
                    lp, hit = self.runner.response_scores(tr.inputs[-1], b)
                    lp_sum += float(lp.double().sum())
                    n += b.n_tokens
                    hit_sum += int(hit.sum())
                    wrong = torch.zeros(int(b.probe_index.max()) + 1, dtype=torch.long, device=hit.device)
                    wrong.index_add_(0, b.probe_index, (~hit).long())
                    present = torch.unique(b.probe_index)
                    seq_ok += int((wrong[present] == 0).sum())
                    n_probes += int(present.numel())
            out[e] = {"recovery": (lp_sum / n - bl["base"]) / bl["gap"] if bl["gap"] else 0.0,
                      "token_accuracy": hit_sum / n, "sequence_accuracy": seq_ok / n_probes}
        return out


OBJECTIVES = ("recovery", "token_accuracy", "sequence_accuracy")


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
        meas = scorer.measure()
        row = {"params": params, **{k: {e: m[k] for e, m in meas.items()} for k in OBJECTIVES}}
        row["objective"] = sum(row[opts.objective].values()) / len(meas)
        row["rank_key"] = rank_key(row, opts.objective)
        table.append(row)
    best = max(table, key=lambda r: r["rank_key"])  # first best wins: deterministic
    best["chosen"] = True  # what the recipe's header reports (the objective alone may tie)
    return dict(best["params"]), table


def rank_key(row: Dict[str, Any], objective: str) -> Tuple[float, ...]:
    """The objective first, then the other measures as tie-breaks (sequence accuracy, token
    accuracy, recovery, skipping the objective)
    (sequence accuracy ties often, e.g. at 0 for long responses)."""
    order = [objective] + [o for o in ("sequence_accuracy", "token_accuracy", "recovery") if o != objective]
    return tuple(round(sum(row[o].values()) / len(row[o]), 12) for o in order)
