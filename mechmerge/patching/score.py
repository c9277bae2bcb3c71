"""`mechmerge score`: plan and run Weight Patching for every expert, write the scores file.

Plan, then execute: inputs are checked (paths, architectures, finite weights, probes,
context length) before the model is loaded, and the work is a list of (expert, phase,
unit, probe-group) jobs run with a progress bar and journaled for --resume.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import torch

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_text, check_output, dumps
from ..models.checkpoint import Checkpoint, check_compatible
from ..models.load import load_model, load_tokenizer, param_order, params_by_name, resolve_device, resolve_dtype
from ..models.units import Unit, discover_units
from ..options import Options, opt
from ..probes import file_sha256, load_probes, make_batches, pad_id_of, tokenize_all
from ..scores import FORMAT, VERSION
from . import engine
from .journal import Journal
from .runner import LayerRunner
from .swap import WeightSwapper, identical


@dataclass
class ScoreOptions(Options):
    base: str = field(metadata=opt("Base model: a Hugging Face model directory or a cached Hub id."))
    experts: Dict[str, str] = field(metadata=opt("An expert as NAME=DIR; repeat for each expert.", flag="expert"))
    probes: Dict[str, str] = field(metadata=opt("Probe set of an expert as NAME=FILE.jsonl; one per expert.", flag="probes"))
    out: str = field(metadata=opt("Where to write the scores JSON."))
    granularity: Literal["module", "layer", "head"] = field(
        default="module", metadata=opt("Units: every weight-owning module, whole decoder blocks, or attention heads."))
    direction: Literal["patch_in", "knockout", "both"] = field(
        default="both", metadata=opt("patch_in: expert unit into the base; knockout: base unit into the expert."))
    method: Literal["exact", "attribution", "hybrid"] = field(
        default="exact", metadata=opt("exact patching; first-order attribution; or attribution plus exact for the top K."))
    top_k: int = field(default=10, metadata=opt("hybrid: units per expert and direction that get exact scores."))
    anchor_layer: Optional[int] = field(default=None, metadata=opt("Anchor block for the anchor score (default: chosen per expert, see README)."))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda[:N]."))
    dtype: str = field(default="auto", metadata=opt("Compute dtype: auto (float32), float32, bfloat16, float16."))
    batch_size: int = field(default=8, metadata=opt("Probes per forward pass."))
    max_probes: Optional[int] = field(default=None, metadata=opt("Use only the first N probes of each file."))
    cache_mb: int = field(default=2048, metadata=opt("Memory for cached block inputs; more means fewer full passes."))
    seed: int = field(default=0, metadata=opt("Random seed (attribution sampling, bootstrap)."))
    min_gap: float = field(default=0.01, metadata=opt("m(E)-m(B) (nats/token) below which an expert is flagged unreliable."))
    check_finite: bool = field(default=True, metadata=opt("Read every expert tensor once up front to reject NaN/Inf and truncated files."))
    resume: bool = field(default=False, metadata=opt("Continue a killed run from its journal (OUT.journal)."))
    force: bool = field(default=False, metadata=opt("Overwrite an existing output file."))
    allow_pickle: bool = field(default=False, metadata=opt("Accept pickle (.bin) checkpoints, loaded with weights_only=True."))
    trust_remote_code: bool = field(default=False, metadata=opt("Allow model code from the checkpoint directory (off: safer)."))
    progress: bool = field(default=True, metadata=opt("Show a progress bar and a summary table."))

    def validate(self) -> None:
        if not self.experts:
            raise UserError("give at least one --expert NAME=DIR")
        for name in self.probes:
            if name not in self.experts:
                raise UserError(f"--probes {name}=... names no expert; experts: {', '.join(self.experts)}")
        for name in self.experts:
            if name not in self.probes:
                raise UserError(f"expert {name!r} has no probe set; add --probes {name}=FILE.jsonl")
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        if self.top_k < 1:
            raise UserError("--top-k must be at least 1")

    def phases(self) -> List[str]:
        return ["patch_in", "knockout"] if self.direction == "both" else [self.direction]


@dataclass
class Setup:
    """Everything checked and loaded before any scoring compute."""

    opts: ScoreOptions
    base: Checkpoint
    experts: Dict[str, Checkpoint]
    batches: Dict[str, list]
    n_probes: Dict[str, int]
    units: List[Unit]
    param_names: List[str]
    model: torch.nn.Module
    runner: LayerRunner
    swapper: WeightSwapper


def prepare(opts: ScoreOptions) -> Setup:
    opts.validate()
    base = Checkpoint.open(opts.base, "base", opts.allow_pickle)
    experts = {n: Checkpoint.open(p, f"expert {n!r}", opts.allow_pickle) for n, p in opts.experts.items()}
    for e in experts.values():
        check_compatible(base, e)
    probes = {n: load_probes(opts.probes[n], limit=opts.max_probes) for n in experts}
    if opts.check_finite:
        for e in experts.values():
            e.check_finite()
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    tokenizer = load_tokenizer([base, *experts.values()], opts.trust_remote_code)
    max_len = base.config.get("max_position_embeddings") or base.config.get("n_positions")
    pad = pad_id_of(tokenizer)
    batches, n_probes = {}, {}
    for n in experts:
        tok = tokenize_all(probes[n], tokenizer, max_len, opts.probes[n])
        batches[n] = [b.to(device) for b in make_batches(tok, opts.batch_size, pad)]
        n_probes[n] = len(tok)
    names = param_order(base, opts.trust_remote_code)
    units = discover_units(names, base.family, base.num_layers, opts.granularity, base.config)
    if opts.anchor_layer is not None and not 0 <= opts.anchor_layer < base.num_layers:
        raise UserError(f"--anchor-layer {opts.anchor_layer} is outside 0..{base.num_layers - 1}")
    model = load_model(base, device, dtype, opts.trust_remote_code)
    return Setup(opts, base, experts, batches, n_probes, units, names, model,
                 LayerRunner(model, base.family), WeightSwapper(params_by_name(model)))


def fingerprint(opts: ScoreOptions, setup_paths: List[Path]) -> str:
    keep = {k: v for k, v in opts.to_dict().items() if k not in ("out", "resume", "force", "progress")}
    files = []
    for d in setup_paths:
        for f in sorted(d.glob("*.safetensors")):
            st = f.stat()
            files.append([str(f), st.st_size, st.st_mtime_ns])
    probes = {n: file_sha256(p) for n, p in sorted(opts.probes.items())}
    blob = json.dumps([keep, files, probes, __version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def score(opts: ScoreOptions) -> Dict[str, Any]:
    """Run Weight Patching and write `opts.out`; returns the scores dict."""
    out = check_output(opts.out, opts.force or opts.resume, "scores file")
    setup = prepare(opts)
    torch.manual_seed(opts.seed)
    journal = Journal(Path(str(out) + ".journal"),
                      fingerprint(opts, [setup.base.path, *(e.path for e in setup.experts.values())]), opts.resume)
    from .progress import Progress

    finished = False
    try:
        with Progress(enabled=opts.progress) as bar:
            results = {n: _score_expert(setup, n, journal, bar) for n in setup.experts}
        data = build(setup, results)
        atomic_write_text(out, dumps(data))
        finished = True
    finally:
        # On failure the journal stays for --resume; on success it has served its purpose.
        journal.close(remove=finished)
    if opts.progress:
        from .summary import print_summary

        print_summary(data, file=sys.stderr)
    return data


def _score_expert(setup: Setup, name: str, journal: Journal, bar) -> Dict[str, Any]:
    opts, runner, swapper, base = setup.opts, setup.runner, setup.swapper, setup.base
    expert = setup.experts[name]
    batches = setup.batches[name]
    bar.stage(f"{name}: baselines")
    bar.add_total(2)
    b_stats = engine.measure_baseline(runner, batches)
    with swapper.swapped_to(expert, base, setup.param_names):
        e_stats = engine.measure_baseline(runner, batches)
    bar.advance(2)
    L = base.num_layers
    anchor_layer = opts.anchor_layer if opts.anchor_layer is not None else engine.choose_anchor_layer(b_stats, e_stats, L)
    anchor = engine.Anchor.between(b_stats, e_stats, anchor_layer)
    same = {u.name: identical(base, expert, u) for u in setup.units}
    todo = [u for u in setup.units if not same[u.name]]
    hidden = int(base.config.get("hidden_size") or base.config.get("n_embd"))
    elem = next(setup.model.parameters()).element_size()
    groups = engine.group_batches(batches, runner, hidden, opts.cache_mb * 2 ** 20, elem)
    bar.add_total(len(todo) * len(groups) * len(opts.phases()))

    raw: Dict[str, Dict[str, engine.Measurement]] = {}
    for phase in opts.phases():
        bar.stage(f"{name}: {phase}")
        done = lambda u, g, p=phase: journal.get(name, p, u, g)  # noqa: E731
        record = lambda u, g, m, p=phase: journal.add(name, p, u, g, m)  # noqa: E731
        if phase == "patch_in":
            raw[phase] = engine.run_phase(runner, swapper, todo, expert, batches, groups, anchor, done, record, bar.tick)
        else:
            with swapper.swapped_to(expert, base, setup.param_names):
                raw[phase] = engine.run_phase(runner, swapper, todo, base, batches, groups, None, done, record, bar.tick)
    return {"b": b_stats, "e": e_stats, "anchor": anchor, "same": same, "raw": raw}


def build(setup: Setup, results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    opts = setup.opts
    units = {
        u.name: {"layer": u.layer, "kind": u.kind, "category": u.category,
                 "params": sum(_numel(setup.base, s) for s in u.slices)}
        for u in setup.units
    }
    experts = {}
    for name, r in results.items():
        b, e, anchor = r["b"], r["e"], r["anchor"]
        m_b, m_e = b.m, e.m
        gap = m_e - m_b
        a_b, a_e = anchor.value(b), anchor.value(e)
        warnings = []
        reliable = gap > opts.min_gap
        if not reliable:
            warnings.append(
                f"expert is not better than the base on its probes (m(E)-m(B) = {gap:.4g} nats/token <= {opts.min_gap}); "
                "its scores are unreliable"
            )
        mods = {}
        for u in setup.units:
            below = u.layer <= anchor.layer
            entry: Dict[str, Any] = {"patch_in": None, "knockout": None, "anchor": None,
                                     "identical": r["same"][u.name], "method": "exact"}
            if r["same"][u.name]:
                for p in opts.phases():
                    entry[p] = 0.0
                entry["anchor"] = 0.0 if below and "patch_in" in r["raw"] else None
            else:
                if "patch_in" in r["raw"]:
                    pi = r["raw"]["patch_in"][u.name]
                    entry["patch_in"] = engine.safe_ratio(pi.lp_sum / pi.n - m_b, gap)
                    if below and pi.anchor_sum is not None:
                        entry["anchor"] = engine.safe_ratio(pi.anchor_sum / pi.n - a_b, a_e - a_b)
                if "knockout" in r["raw"]:
                    ko = r["raw"]["knockout"][u.name]
                    entry["knockout"] = engine.safe_ratio(m_e - ko.lp_sum / ko.n, gap)
            mods[u.name] = entry
        experts[name] = {
            "model": opts.experts[name],
            "probes": opts.probes[name],
            "probes_sha256": file_sha256(opts.probes[name]),
            "n_probes": setup.n_probes[name],
            "n_tokens": b.n,
            "baseline": {"base": m_b, "expert": m_e, "gap": gap, "anchor_layer": anchor.layer,
                         "anchor_base": a_b, "anchor_expert": a_e},
            "reliable": reliable,
            "warnings": warnings,
            "modules": mods,
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "mechmerge_version": __version__,
        "base": opts.base,
        "granularity": opts.granularity,
        "method": opts.method,
        "directions": opts.phases(),
        "options": {k: v for k, v in opts.to_dict().items() if k not in ("resume", "force", "progress")},
        "units": units,
        "experts": experts,
    }


def _numel(ckpt: Checkpoint, s) -> int:
    shape = ckpt.tensors[s.tensor].shape
    if s.dim is None:
        n = 1
        for d in shape:
            n *= d
        return n
    n = s.stop - s.start
    for i, d in enumerate(shape):
        if i != s.dim:
            n *= d
    return n
