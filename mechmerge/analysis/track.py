"""`mechmerge track`: how the units that carry a behaviour move during fine-tuning.

Every checkpoint is scored as an expert against the base on the same probes. Between
consecutive checkpoints (i -> j):
  distance      1 − Jaccard(top-K_i, top-K_j): overall, among attention units, among MLP units
  stability     Spearman correlation of the patch_in vectors over the units that differ
                from the base in at least one of the two (units identical in both score 0 in
                both and would inflate it, as in `agree`); None below two such units
  faithfulness  recovery of checkpoint j's behaviour by patching top-K_i from j into the
                base (1.0: the earlier map still explains the later model), next to
                top-K_j itself and the two controls of top-K_i's size (random, largest ‖E − B‖)
A checkpoint no better than the base on the probes (gap <= --min-gap of `score`) is
flagged unreliable in the JSON and on stderr: its scores are noise, or flipped in sign.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..io import atomic_write_text, check_output, dumps
from ..options import Options, opt
from . import sets
from .stats import spearman

FORMAT = "mechmerge.track"


@dataclass
class TrackOptions(Options):
    base: str = field(metadata=opt("Base model directory."))
    checkpoints: Dict[str, str] = field(metadata=opt("A checkpoint as NAME=DIR, in training order; repeat.",
                                                     flag="checkpoint", metavar="NAME=DIR"))
    probes: str = field(metadata=opt("Probe set (JSONL) the behaviour is measured on."))
    out: str = field(metadata=opt("Where to write the track JSON (scores go to OUT.scores.json)."))
    top_k: int = field(default=10, metadata=opt("Size of the top unit sets.", min=1))
    granularity: Literal["module", "layer", "head"] = field(default="module", metadata=opt("Units."))
    method: Literal["exact", "attribution", "hybrid"] = field(default="exact", metadata=opt(
        "How each checkpoint is scored (as in `mechmerge score`); hybrid measures each checkpoint's top units "
        "exactly and estimates the rest, for models where exact scoring of every checkpoint is too slow."))
    batch_size: int = field(default=8, metadata=opt("Probes per forward pass.", min=1))
    max_probes: Optional[int] = field(default=None, metadata=opt("Use only the first N probes.", min=1))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda."))
    seed: int = field(default=0, metadata=opt("Seed of the random control sets."))
    force: bool = field(default=False, metadata=opt("Overwrite existing outputs."))
    resume: bool = field(default=False, metadata=opt(
        "Continue a killed run: its scoring from the journal (OUT.scores.json.journal), or its finished "
        "OUT.scores.json if the scoring had ended."))
    progress: bool = field(default=True, metadata=opt("Progress bar."))


def jaccard_distance(a: List[str], b: List[str]) -> Optional[float]:
    """None when both sets are empty (neither checkpoint has a unit with positive patch_in)."""
    sa, sb = set(a), set(b)
    return None if not (sa | sb) else 1.0 - len(sa & sb) / len(sa | sb)


def stability(vi: np.ndarray, vj: np.ndarray, changed: np.ndarray) -> Tuple[Optional[float], int]:
    """(Spearman of vi and vj over the units where `changed`, how many): [n_units] each.
    Units identical to the base in both checkpoints are exact zeros in both; a block of
    shared zeros correlates with itself and would hide how the changed units reorder."""
    n = int(changed.sum())
    return (spearman(vi[changed], vj[changed]) if n > 1 else None), n


def _fmt(x: Optional[float], spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def finished_scores(sopts) -> Optional[Dict[str, Any]]:
    """--resume after the scoring had finished (the journal is gone, the scores file is there):
    that file, if it was made with these options and probes; None to score (or resume scoring)."""
    from ..io import file_sha256, read_json

    path = Path(sopts.out)
    if not path.is_file() or list(path.parent.glob(f"{path.name}.journal*")):
        return None
    data = read_json(path, "scores file")
    recorded = data.get("options", {}) if isinstance(data, dict) else {}
    now = sopts.to_dict()
    differ = sorted(k for k in recorded if k in now and recorded[k] != now[k])
    if not differ and ({n: e.get("probes_sha256") for n, e in data.get("experts", {}).items()}
                       != {n: file_sha256(p) for n, p in sopts.probes.items()}):
        differ = ["probes (content)"]
    if differ:
        raise UserError(f"--resume: {path} was made with other {', '.join(differ)}; run with --force to score again")
    print(f"resuming from the finished scores in {path}", file=sys.stderr)
    return data


def warn_unreliable(name: str, gap: float) -> None:
    print(f"warning: checkpoint {name!r} is not better than the base on the probes (m(E)-m(B) = {gap:.4g} "
          "nats/token); its scores are unreliable (a negative gap flips their sign), and so are the "
          "transitions from and to it: check the checkpoint and the probe set", file=sys.stderr)


def track(opts: TrackOptions) -> Dict[str, Any]:
    if len(opts.checkpoints) < 2:
        raise UserError("give at least two --checkpoint NAME=DIR, in training order")
    out = check_output(opts.out, opts.force or opts.resume, "track file",
                       inputs=[opts.base, *opts.checkpoints.values(), opts.probes])
    from ..patching.score import ScoreOptions, prepare, score

    sopts = ScoreOptions(base=opts.base, experts=dict(opts.checkpoints), probes={n: opts.probes for n in opts.checkpoints},
                         out=f"{out}.scores.json", granularity=opts.granularity, direction="patch_in",
                         method=opts.method, top_k=opts.top_k,
                         batch_size=opts.batch_size, max_probes=opts.max_probes, device=opts.device,
                         force=opts.force, resume=opts.resume, progress=opts.progress)
    data = finished_scores(sopts) if opts.resume else None
    if data is None:  # as written (rounded), so a resumed run computes from the same numbers
        data = json.loads(dumps(score(sopts)))
    from ..recipe.taskvectors import magnitudes

    reliable = {n: bool(data["experts"][n]["reliable"]) for n in opts.checkpoints}
    for n, ok in reliable.items():
        if not ok:  # printed even with --no-progress: every number involving n is suspect
            warn_unreliable(n, data["experts"][n]["baseline"]["gap"])

    names = list(opts.checkpoints)
    units = list(data["units"])
    cat = {u: data["units"][u]["category"] for u in units}
    norms = magnitudes(data, names)
    K = opts.top_k
    top = {}
    for n in names:
        mods = data["experts"][n]["modules"]
        top[n] = {"all": sets.top_k(mods, K),
                  "attention": sets.top_k(mods, K, among=[u for u in units if cat[u] == "attention"]),
                  "mlp": sets.top_k(mods, K, among=[u for u in units if cat[u] == "mlp"])}
    setup = prepare(sopts)
    by_name = {u.name: u for u in setup.units}
    transitions = []
    for i, j in zip(names, names[1:]):
        ej = data["experts"][j]
        bl = {"base": ej["baseline"]["base"], "expert": ej["baseline"]["expert"]}
        mi, mj = data["experts"][i]["modules"], ej["modules"]
        vi = np.array([mi[u]["patch_in"] for u in units])
        vj = np.array([mj[u]["patch_in"] for u in units])
        rho, n_changed = stability(vi, vj, np.array([not (mi[u]["identical"] and mj[u]["identical"]) for u in units]))
        # the controls stand next to earlier_top, the headline number: the same size as that set
        # (smaller than K when checkpoint i has fewer than K units with positive patch_in)
        ctl = sets.controls(units, len(top[i]["all"]), norms[j], opts.seed)
        faith = {name: sets.recovery(setup, j, [by_name[u] for u in s], bl)
                 for name, s in {"earlier_top": top[i]["all"], "own_top": top[j]["all"], **ctl}.items()}
        transitions.append({
            "from": i, "to": j,
            "distance": {k: jaccard_distance(top[i][k], top[j][k]) for k in ("all", "attention", "mlp")},
            "stability": rho,
            "stability_units": n_changed,
            "faithfulness": faith,
            "controls": ctl,
        })
        if opts.progress:
            print(f"{i} -> {j}: distance {_fmt(transitions[-1]['distance']['all'], '.2f')}, stability "
                  f"{_fmt(rho, '.2f')} over {n_changed} changed units, faithfulness of {i}'s top-{K} on {j}: "
                  f"{faith['earlier_top']:.3f} (own {faith['own_top']:.3f}, random {faith['random']:.3f}, "
                  f"magnitude {faith['magnitude']:.3f})", file=sys.stderr)
    # version 2: stability over changed units only (with stability_units), controls of earlier_top's
    # size, per-checkpoint reliable flags
    result = {"format": FORMAT, "version": 2, "base": opts.base, "probes": opts.probes, "top_k": K,
              "checkpoints": names, "scores": str(Path(f"{out}.scores.json")),
              "gaps": {n: data["experts"][n]["baseline"]["gap"] for n in names}, "reliable": reliable,
              "top": top, "patch_in": {n: {u: data["experts"][n]["modules"][u]["patch_in"] for u in units}
                                       for n in names},
              "transitions": transitions}
    atomic_write_text(out, dumps(result))
    return result
