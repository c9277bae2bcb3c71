"""`mechmerge score`: plan and run Weight Patching for every expert, write the scores file.

Plan, then execute: inputs are checked (paths, architectures, finite weights, probes,
context length) before the model is loaded, and the work is a list of (expert, phase,
unit, probe-group) jobs run with a progress bar and journaled for --resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import torch

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_text, check_output, dumps, file_sha256
from ..models.checkpoint import Checkpoint, check_compatible
from ..models.families import config_value
from ..models.load import load_model, load_tokenizer, param_order, params_by_name, resolve_device, resolve_dtype
from ..models.memory import release_memory
from ..models.units import Unit, discover_units, head_info
from ..options import Options, opt
from ..probes import load_probes, make_batches, pad_id_of, tokenize_all
from ..scores import FORMAT, VERSION, check_expert_name, unit_records
from . import distributed as dist
from . import engine
from .expert import ExpertResult, measure_expert
from .journal import Journal
from .runner import LayerRunner
from .swap import WeightSwapper


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


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
    top_k: int = field(default=10, metadata=opt("hybrid: units per expert and direction that get exact scores.", min=1))
    hybrid_margin: float = field(default=1.5, metadata=opt(
        "hybrid: measure exactly each first-order estimate's top ceil(margin x K) units (estimates at the base and at "
        "the expert), so a true top-K unit the estimates rank a little low is still measured."))
    anchor_layer: Optional[int] = field(default=None, metadata=opt("Anchor block for the anchor score (default: chosen per expert, see README)."))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda[:N]."))
    device_map: Optional[str] = field(default=None, metadata=opt(
        "Spread a base too large for one GPU over all visible GPUs with accelerate: auto, balanced, balanced_low_0 "
        "or sequential (as in from_pretrained). It must fit in the GPUs together: offloaded weights cannot be patched."))
    dtype: str = field(default="auto", metadata=opt("Compute dtype: auto (float32), float32, bfloat16, float16."))
    batch_size: int = field(default=8, metadata=opt("Probes per forward pass.", min=1))
    max_probes: Optional[int] = field(default=None, metadata=opt("Use only the first N probes of each file.", min=1))
    cache_mb: int = field(default=2048, metadata=opt(
        "Memory for cached block inputs; more means fewer full passes.", min=0))
    seed: int = field(default=0, metadata=opt("Random seed (attribution sampling, bootstrap)."))
    min_gap: float = field(default=0.01, metadata=opt("m(E)-m(B) (nats/token) below which an expert is flagged unreliable."))
    bootstrap: int = field(default=0, metadata=opt(
        "Bootstrap replicates over probes for confidence intervals (0: none).", min=0))
    ci_level: float = field(default=0.95, metadata=opt("Confidence level of the bootstrap intervals."))
    check_finite: bool = field(default=True, metadata=opt("Read every expert tensor once up front to reject NaN/Inf and truncated files."))
    resume: bool = field(default=False, metadata=opt("Continue a killed run from its journal (OUT.journal)."))
    force: bool = field(default=False, metadata=opt("Overwrite an existing output file."))
    allow_pickle: bool = field(default=False, metadata=opt("Accept pickle (.bin) checkpoints, loaded with weights_only=True."))
    trust_remote_code: bool = field(default=False, metadata=opt("Allow model code from the checkpoint directory (off: safer)."))
    progress: bool = field(default=True, metadata=opt("Show a progress bar and a summary table."))

    def validate(self) -> None:
        if not self.experts:
            raise UserError("give at least one --expert NAME=DIR")
        for name in self.experts:
            check_expert_name(name, f"--expert {name}=...")
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
        if not 0 < self.ci_level < 1:
            # unchecked, 95 failed in np.percentile only after every measurement, and its journal
            # (fingerprinted with 95) refused a --resume with 0.95: all of it ran again
            raise UserError(f"--ci-level {self.ci_level:g}: --ci-level is a fraction, e.g. 0.95 for 95 % intervals")
        if self.hybrid_margin < 1:
            raise UserError("--hybrid-margin must be at least 1 (1: each estimate's top K only)")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise UserError(f"--device-map {self.device_map!r} is not one of {', '.join(DEVICE_MAPS)}")
        if self.device_map is not None and dist.launched():
            raise UserError("--device-map spreads one model over the devices; it cannot be combined with a "
                            "multi-process launch (each rank would load the whole model)")

    @classmethod
    def from_record(cls, data: Dict[str, Any], **overrides: Any) -> "ScoreOptions":
        """The options a scores file was made with (its models, probes and recorded settings:
        dtype, batch size, probe limit...), for measuring more on the same setup; `overrides`
        replace any of them. Never from the file: permissions and safety checks (pickle,
        remote code, the finiteness check), which only the caller's command line grants (a
        scores file is copied into merged models and downloaded with them), nor this run's
        device and output handling."""
        caller_only = ("allow_pickle", "trust_remote_code", "check_finite", "device", "device_map", "out", "resume",
                       "force", "progress")
        names = {f.name for f in dataclasses.fields(cls)} - set(caller_only)
        kw = {k: v for k, v in (data.get("options") or {}).items() if k in names}
        kw.update(base=data["base"], experts={n: e["model"] for n, e in data["experts"].items()},
                  probes={n: e["probes"] for n, e in data["experts"].items()}, out="",
                  granularity=data["granularity"])
        kw.update(overrides)
        return cls(**kw)

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
    model = load_model(base, device, dtype, opts.trust_remote_code, opts.device_map)
    release_memory()  # the streamed load's transients
    if opts.device_map:  # inputs start where the embeddings live; accelerate's hooks move them on
        device = model.get_input_embeddings().weight.device
    tokenizer = load_tokenizer([base, *experts.values()], opts.trust_remote_code)
    max_len = config_value(base.config, "max_position_embeddings")
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
    return Setup(opts, base, experts, batches, n_probes, units, names, model,
                 LayerRunner(model, base.family), WeightSwapper(params_by_name(model), base))


# Small files that change the tokens or the computation without touching the weights.
FINGERPRINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "tokenizer.model", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def fingerprint(opts: ScoreOptions, setup_paths: List[Path], model: Optional[torch.nn.Module] = None) -> str:
    """What a journal's numbers depend on, so --resume never mixes two settings: options,
    probes and small model files by content, weight files by name, size and mtime (hashing
    gigabytes per run would cost more than it protects), the device and dtype the numbers
    were computed in, and the library versions."""
    import transformers

    keep = {k: v for k, v in opts.to_dict().items() if k not in ("out", "resume", "force", "progress")}
    files, small = [], {}
    for d in setup_paths:
        for pattern in ("*.safetensors", "*.bin", "*.pt"):
            for f in sorted(d.glob(pattern)):
                st = f.stat()
                files.append([str(f), st.st_size, st.st_mtime_ns])
        small.update({str(d / n): file_sha256(d / n) for n in FINGERPRINT_FILES if (d / n).is_file()})
    probes = {n: file_sha256(p) for n, p in sorted(opts.probes.items())}
    where = None
    if model is not None:
        w = next(model.parameters())
        where = [str(w.device), str(w.dtype)]
    blob = json.dumps([keep, files, small, probes, where, __version__, torch.__version__, transformers.__version__],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_journals(out: Path, world: int) -> None:
    """--resume with another number of processes than the run that wrote the journals: each
    rank's journal holds the units dealt to it, so they cannot be shared out again."""
    mine = {f"{out.name}.journal"} if world == 1 else {f"{out.name}.journal.rank{r}" for r in range(world)}
    other = sorted(p.name for p in out.parent.glob(f"{out.name}.journal*") if p.name not in mine)
    if other:
        raise UserError(f"--resume: {', '.join(other)} in {str(out.parent)!r} were written by a run with another "
                        f"number of processes than this one ({world}); resume with that number, or delete them "
                        "to start over")


def score(opts: ScoreOptions) -> Dict[str, Any]:
    """Run Weight Patching and write `opts.out`; returns the scores dict on rank 0 ({} on the others)."""
    dist.init(opts.device)
    opts.device = dist.local_device(opts.device)
    out = Path(opts.out)
    if dist.rank() == 0:
        check_output(out, opts.force or opts.resume, "scores file",
                     inputs=[opts.base, *opts.experts.values(), *opts.probes.values()])
        if opts.resume:
            check_journals(out, dist.world())
    setup = prepare(opts)
    if opts.granularity == "head" and dist.rank() == 0:
        print(head_info(setup.base.config)["note"], file=sys.stderr)
    torch.manual_seed(opts.seed)
    suffix = f".rank{dist.rank()}" if dist.world() > 1 else ""
    journal = Journal(Path(f"{out}.journal{suffix}"),
                      fingerprint(opts, [setup.base.path, *(e.path for e in setup.experts.values())], setup.model),
                      opts.resume)
    from .progress import Progress

    finished = False
    data: Dict[str, Any] = {}
    try:
        with Progress(enabled=opts.progress and dist.rank() == 0) as bar:
            results = {n: measure_expert(setup, n, journal, bar) for n in setup.experts}
        if dist.rank() == 0:
            data = assemble(setup, results)
            atomic_write_text(out, dumps(data))
        dist.barrier()
        finished = True
    finally:
        # On failure the journal stays for --resume; on success it has served its purpose.
        journal.close(remove=finished)
    if opts.progress and dist.rank() == 0:
        from .summary import print_summary

        print_summary(data, file=sys.stderr)
    return data


def _not_finite(whose: str, dtype: str) -> UserError:
    """The weights were checked finite: a NaN or Inf measurement is an overflow in the compute dtype."""
    return UserError(f"{whose} log-probability of the probes is not finite (overflow in {dtype} arithmetic?); "
                     "score with --dtype float32")


def assemble(setup: Setup, results: Dict[str, ExpertResult]) -> Dict[str, Any]:
    """Scores (ratios) from the measured deltas, in the documented JSON layout."""
    opts = setup.opts
    units = unit_records(setup.base, setup.units)  # what recipe and conflict check a base against
    experts = {}
    for name, r in results.items():
        m_b, m_e = r.base.m, r.expert.m
        if not (math.isfinite(m_b) and math.isfinite(m_e)):
            raise _not_finite(f"expert {name!r}: the {'base' if not math.isfinite(m_b) else 'expert'}'s", opts.dtype)
        gap = m_e - m_b
        a_b, a_e = r.a_base, r.a_expert
        reliable = gap > opts.min_gap
        warnings = [] if reliable else [
            f"expert is not better than the base on its probes (m(E)-m(B) = {gap:.4g} nats/token <= {opts.min_gap}); "
            "its scores are unreliable"]
        ci = {}
        if opts.bootstrap:
            import numpy as np

            from .bootstrap import intervals

            ci = intervals(r, np.asarray(r.tokens_per_probe, dtype=np.float64), opts.bootstrap, opts.seed,
                           opts.ci_level, opts.phases(), [u.name for u in setup.units])
        mods = {}
        for u in setup.units:
            below = u.layer <= r.anchor.layer
            entry: Dict[str, Any] = {"patch_in": None, "knockout": None, "anchor": None,
                                     "identical": r.same[u.name], "method": "exact"}
            for phase in opts.phases():
                if r.same[u.name]:
                    entry[phase] = 0.0
                    if phase == "patch_in" and below:
                        entry["anchor"] = 0.0
                    continue
                dm, da, method = r.deltas[phase][u.name]
                if not math.isfinite(dm) or (da is not None and not math.isfinite(da)):
                    raise _not_finite(f"expert {name!r}, unit {u.name} ({phase}): the patched model's", opts.dtype)
                entry[phase] = engine.safe_ratio(dm, gap)
                entry["method"] = method
                if phase == "patch_in" and below and da is not None:
                    entry["anchor"] = engine.safe_ratio(da, a_e - a_b)
            if opts.bootstrap:
                entry["ci"] = ci.get(u.name, {})
            mods[u.name] = entry
        experts[name] = {
            "model": opts.experts[name],
            "probes": opts.probes[name],
            "probes_sha256": file_sha256(opts.probes[name]),
            "n_probes": setup.n_probes[name],
            "n_tokens": r.base.n,
            "baseline": {"base": m_b, "expert": m_e, "gap": gap, "anchor_layer": r.anchor.layer,
                         "anchor_base": a_b, "anchor_expert": a_e},
            "reliable": reliable,
            "warnings": warnings,
            **({"bootstrap": {"replicates": opts.bootstrap, "level": opts.ci_level}} if opts.bootstrap else {}),
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
        **({"heads": head_info(setup.base.config)} if opts.granularity == "head" else {}),
        "options": {k: v for k, v in opts.to_dict().items() if k not in ("out", "resume", "force", "progress", "device", "device_map")},
        "units": units,
        "experts": experts,
    }
