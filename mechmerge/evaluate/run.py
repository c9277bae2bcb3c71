"""`mechmerge eval`: per-task greedy accuracy, response log-probability, and accuracy by
confidence quartile.

Quartiles: each task's probes are sorted by the *base* model's mean per-token
log-probability of the reference response and cut into four near-equal groups, Q1 the
least confident. The same probes fall in the same quartile for every model evaluated
against the same base, so a capability that moves from one confidence band to
another shows up even when the aggregate accuracy does not move.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..io import atomic_write_text, check_output, dumps
from ..models.checkpoint import Checkpoint
from ..models.load import load_model, load_tokenizer, resolve_device, resolve_dtype
from ..options import Options, opt
from ..patching.runner import LayerRunner
from ..probes import Probe, load_probes, make_batches, pad_id_of, tokenize_all
from .generate import greedy_generate
from .metrics import METRICS

QUARTILES = ("Q1", "Q2", "Q3", "Q4")


@dataclass
class EvalOptions(Options):
    model: str = field(metadata=opt("Model directory to evaluate.", argument=True, metavar="MODEL"))
    probes: Dict[str, str] = field(metadata=opt("A task as NAME=FILE.jsonl; repeat for each task.",
                                                metavar="NAME=FILE"))
    json_out: Optional[str] = field(default=None, metadata=opt("Write the results JSON here.", flag="json"))
    base: Optional[str] = field(default=None, metadata=opt(
        "Base model whose confidence defines the quartiles (default: the evaluated model itself)."))
    metric: Dict[str, str] = field(default_factory=dict, metadata=opt(
        "Metric of a task as NAME=METRIC: exact (default), prefix, logprob (no generation) or "
        "package.module:function.", metavar="NAME=METRIC"))
    batch_size: int = field(default=32, metadata=opt("Prompts per generation batch.", min=1))
    max_new_tokens: int = field(default=32, metadata=opt("Generation length limit.", min=1))
    max_probes: Optional[int] = field(default=None, metadata=opt("Use only the first N probes of each file.", min=1))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda[:N]."))
    dtype: str = field(default="auto", metadata=opt(
        "auto (float32), float32, bfloat16 or float16: bfloat16 generates ~2x faster on CPUs with AVX512-BF16."))
    force: bool = field(default=False, metadata=opt("Overwrite an existing JSON output."))
    progress: bool = field(default=True, metadata=opt("Show a progress bar."))


@dataclass
class Task:
    name: str
    probes: List[Probe]
    metric: Optional[Callable[[str, Probe], bool]]  # None: log-probability only, no generation
    batches: list = field(default_factory=list)
    quartile_of: Optional[np.ndarray] = None  # [n_probes] in 0..3


def per_probe_logprob(runner: LayerRunner, batches: Sequence, n_probes: int) -> tuple[np.ndarray, float]:
    """(mean log-prob per token of each probe's response, pooled mean over all tokens)."""
    sums = torch.zeros(n_probes, dtype=torch.float64)
    counts = torch.zeros(n_probes, dtype=torch.float64)
    with torch.no_grad():
        for b in batches:
            lp = runner.response_logprobs(runner.trace(b, keep_inputs=False).inputs[-1], b).double().cpu()
            idx = b.probe_index.cpu()
            sums.index_add_(0, idx, lp)
            counts.index_add_(0, idx, torch.ones_like(lp))
    return (sums / counts).numpy(), float(sums.sum() / counts.sum())


def quartiles(confidence: np.ndarray) -> np.ndarray:
    """Quartile index (0 = least confident) of each probe: [n_probes] -> [n_probes] in 0..3.

    The probes sorted by confidence are cut by `np.array_split`, so the first n % 4 quartiles
    hold one probe more (n = 6: sizes 2, 2, 1, 1). Probes with equal confidence keep their file
    order and may be split across two quartiles at a cut: bands stay near-equal in size, and the
    split is the same for every model evaluated against the same base, so comparisons between
    models are unaffected. Exact float ties are rare (duplicate probes, in practice)."""
    order = np.argsort(confidence, kind="stable")
    q = np.empty(len(confidence), dtype=np.int64)
    for i, chunk in enumerate(np.array_split(order, 4)):
        q[chunk] = i
    return q


class Evaluator:
    """Tasks tokenized once, quartiles fixed by the base; `run(model)` evaluates a model."""

    def __init__(self, tasks: Dict[str, str], tokenizer, metrics: Optional[Dict[str, str]] = None,
                 batch_size: int = 32, max_new_tokens: int = 32, max_probes: Optional[int] = None,
                 device: torch.device = torch.device("cpu")):
        metrics = metrics or {}
        for name in metrics:
            if name not in tasks:
                raise UserError(f"--metric {name}=... names no task; tasks: {', '.join(tasks)}")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.tasks: Dict[str, Task] = {}
        pad = pad_id_of(tokenizer)
        for name, path in tasks.items():
            probes = load_probes(path, limit=max_probes)
            # "logprob": a quality measure (e.g. the base's own answers), scored without generating
            metric = None if metrics.get(name) == "logprob" else METRICS.get(metrics.get(name, "exact"))
            toks = tokenize_all(probes, tokenizer, None, path)
            self.tasks[name] = Task(name, probes, metric, [b.to(device) for b in make_batches(toks, batch_size, pad)])

    def set_quartiles(self, base_model, family) -> None:
        runner = LayerRunner(base_model, family)
        for t in self.tasks.values():
            conf, _ = per_probe_logprob(runner, t.batches, len(t.probes))
            t.quartile_of = quartiles(conf)

    def run(self, model, family, progress: bool = False, label: str = "eval",
            tasks: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Evaluate `model` on every task (or only `tasks`)."""
        runner = LayerRunner(model, family)
        chosen = [self.tasks[n] for n in (tasks if tasks is not None else self.tasks)]
        out = {}
        bar = tqdm(total=sum(len(t.probes) for t in chosen), desc=label, file=sys.stderr,
                   disable=not progress, unit="probe")
        for t in chosen:
            conf, pooled = per_probe_logprob(runner, t.batches, len(t.probes))
            if t.quartile_of is None:
                t.quartile_of = quartiles(conf)
            if t.metric is None:
                bar.update(len(t.probes))
                out[t.name] = {"accuracy": None, "logprob": pooled, "n": len(t.probes),
                               "quartiles": {q: None for q in QUARTILES}, "stderr": None, "correct": []}
                continue
            preds: List[str] = []
            for s in range(0, len(t.probes), self.batch_size):
                chunk = t.probes[s: s + self.batch_size]
                preds += greedy_generate(model, self.tokenizer, chunk, self.max_new_tokens, self.batch_size)
                bar.update(len(chunk))
            correct = np.array([t.metric(p, probe) for p, probe in zip(preds, t.probes)], dtype=np.float64)
            out[t.name] = {
                "accuracy": float(correct.mean()),
                "logprob": pooled,
                "n": len(t.probes),
                "quartiles": {q: float(correct[t.quartile_of == i].mean()) if (t.quartile_of == i).any() else None
                              for i, q in enumerate(QUARTILES)},
                "stderr": float(correct.std(ddof=1) / np.sqrt(len(correct))) if len(correct) > 1 else 0.0,
                "correct": correct.astype(int).tolist(),
            }
        bar.close()
        return out


def evaluate(opts: EvalOptions) -> Dict[str, Any]:
    if not opts.probes:
        raise UserError("give at least one --probes NAME=FILE")
    if opts.json_out:
        check_output(opts.json_out, opts.force, "results JSON", inputs=[opts.model, opts.base, *opts.probes.values()])
    ck = Checkpoint.open(opts.model, "model")
    dev = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, dev)
    tok = load_tokenizer([ck])
    ev = Evaluator(dict(opts.probes), tok, dict(opts.metric), opts.batch_size, opts.max_new_tokens,
                   opts.max_probes, dev)
    if opts.base:
        bck = Checkpoint.open(opts.base, "base")
        ev.set_quartiles(load_model(bck, dev, dtype), bck.family)
    results = ev.run(load_model(ck, dev, dtype), ck.family, progress=opts.progress)
    data = {"format": "mechmerge.eval", "version": 1, "model": opts.model,
            "quartile_reference": opts.base or opts.model,
            "settings": {"max_new_tokens": opts.max_new_tokens, "dtype": str(dtype).replace("torch.", ""),
                         "metrics": {n: opts.metric.get(n, "exact") for n in opts.probes}},
            "tasks": {n: {k: v for k, v in r.items() if k != "correct"} for n, r in results.items()}}
    if opts.json_out:
        atomic_write_text(opts.json_out, dumps(data))
    return data


def format_table(data: Dict[str, Any]) -> str:
    rows = [f"{'task':<16} {'acc':>6} {'logprob':>9} {'n':>5}   " + "  ".join(f"{q:>5}" for q in QUARTILES)]
    for name, t in data["tasks"].items():
        qs = "  ".join("    –" if t["quartiles"][q] is None else f"{t['quartiles'][q]:5.2f}" for q in QUARTILES)
        acc = "     –" if t["accuracy"] is None else f"{t['accuracy']:6.3f}"
        rows.append(f"{name:<16} {acc} {t['logprob']:9.4f} {t['n']:5d}   {qs}")
    return "\n".join(rows)
