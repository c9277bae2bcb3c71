"""`mechmerge conflict SCORES`: how much two experts fight over the same units.

For experts a, b with top-K sets S_a, S_b (by patch_in):
  static   |S_a ∩ S_b| / K  ×  share of the shared units where the two task vectors
           point against each other (cosine ≤ 0)
  causal   the drop on b's behaviour when a's top-K units are reverted to the base
           inside expert b: (m_b(E_b) − m_b(E_b ⊕ B[S_a])) / (m_b(E_b) − m_b(B)), next to
           the same for a random and a magnitude-only set of size K (the controls)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ..io import atomic_write_text, check_output, dumps
from ..options import Options, opt
from ..scores import read_scores
from . import sets


@dataclass
class ConflictOptions(Options):
    scores: str = field(metadata=opt("Scores JSON with two or more experts.", argument=True, metavar="SCORES"))
    out: Optional[str] = field(default=None, metadata=opt("Write the conflict matrices as JSON here."))
    top_k: int = field(default=10, metadata=opt("Size of the top unit sets.", min=1))
    causal: bool = field(default=True, metadata=opt("Also measure the causal conflict (forward passes)."))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda."))
    seed: int = field(default=0, metadata=opt("Seed of the random control sets."))
    force: bool = field(default=False, metadata=opt("Overwrite the output."))
    # never taken from the scores file, which travels with merged models (ScoreOptions.from_record)
    allow_pickle: bool = field(default=False, metadata=opt(
        "Accept pickle (.bin) checkpoints, loaded with weights_only=True."))
    trust_remote_code: bool = field(default=False, metadata=opt(
        "Allow model code from the checkpoint directories (off: safer)."))


def static_conflict(data: Dict[str, Any], k: int, allow_pickle: bool = False) -> Dict[str, Any]:
    from ..recipe.taskvectors import cosines

    names = list(data["experts"])
    units = list(data["units"])
    cos = cosines(data, names, allow_pickle)  # [U, E, E]
    top = {n: sets.top_k(data["experts"][n]["modules"], k) for n in names}
    out: Dict[str, Dict[str, Any]] = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if a == b:
                continue
            shared = sorted(set(top[a]) & set(top[b]), key=units.index)
            against = [u for u in shared if cos[units.index(u), i, j] <= 0]
            overlap = len(shared) / k
            out.setdefault(a, {})[b] = {"overlap": overlap, "disagree_share": len(against) / len(shared) if shared else 0.0,
                                        "conflict": overlap * (len(against) / len(shared) if shared else 0.0),
                                        "shared": shared, "disagree": against}
    return {"top": top, "pairs": out}


def causal_conflict(data: Dict[str, Any], k: int, device: str, seed: int, allow_pickle: bool = False,
                    trust_remote_code: bool = False) -> Dict[str, Any]:
    from ..patching.score import ScoreOptions, prepare
    from ..recipe.taskvectors import magnitudes

    # the scoring's own setup (dtype, batch size, probe limit), on this run's device, with this run's permissions
    setup = prepare(ScoreOptions.from_record(data, device=device, check_finite=False, progress=False,
                                             allow_pickle=allow_pickle, trust_remote_code=trust_remote_code))
    by_name = {u.name: u for u in setup.units}
    names = list(data["experts"])
    units = list(data["units"])
    norms = magnitudes(data, names, allow_pickle)
    out: Dict[str, Dict[str, Any]] = {}
    for b in names:
        bl = sets.baselines(setup, b)
        for a in names:
            s_a = sets.top_k(data["experts"][a]["modules"], k)
            ctl = sets.controls(units, len(s_a), norms[a], seed)  # as many as the top set holds
            row = {"drop": sets.knockout(setup, b, [by_name[u] for u in s_a], bl)}
            for cname, cset in ctl.items():
                row[f"drop_{cname}"] = sets.knockout(setup, b, [by_name[u] for u in cset], bl)
            out.setdefault(a, {})[b] = row
            print(f"  revert top-{k} of {a} inside {b}: {b} loses {row['drop']:.3f} "
                  f"(random {row['drop_random']:.3f}, magnitude {row['drop_magnitude']:.3f})", file=sys.stderr)
    return out


def conflict(opts: ConflictOptions) -> Dict[str, Any]:
    if opts.out:
        check_output(opts.out, opts.force, "conflict file", inputs=[opts.scores])
    data = read_scores(opts.scores)
    if opts.out:  # known only now: the models (and, for --causal, the probes) the scores name
        from ..io import check_inputs

        read = [data["base"], *(e["model"] for e in data["experts"].values())]
        read += [e["probes"] for e in data["experts"].values()] if opts.causal else []
        check_inputs(opts.out, read, "conflict file", directory=False)
    if len(data["experts"]) < 2:
        from ..errors import UserError

        raise UserError(f"{opts.scores}: conflict needs a scores file with two or more experts")
    from ..recipe.build import scored_units

    scored_units(data, opts.scores, opts.allow_pickle, opts.trust_remote_code)  # measured on this base?
    result = {"format": "mechmerge.conflict", "version": 1, "scores": opts.scores, "top_k": opts.top_k,
              "static": static_conflict(data, opts.top_k, opts.allow_pickle)}
    if opts.causal:
        result["causal"] = causal_conflict(data, opts.top_k, opts.device, opts.seed, opts.allow_pickle,
                                           opts.trust_remote_code)
    if opts.out:
        atomic_write_text(opts.out, dumps(result))
    return result


def table(result: Dict[str, Any]) -> str:
    pairs = result["static"]["pairs"]
    names = list(result["static"]["top"])
    lines = ["static conflict (overlap x disagreeing share) / causal drop on column when row's top-K is reverted"
             + (" (the diagonal: an expert's own top-K)" if "causal" in result else "") + ":",
             f"{'':<14}" + "".join(f"{n:>22}" for n in names)]
    for a in names:
        cells = []
        for b in names:
            # the diagonal has no static conflict, but its causal drop is the yardstick for the row
            s = f"{'—':>10}" if a == b else f"{pairs[a][b]['conflict']:>10.2f}"
            c = result.get("causal", {}).get(a, {}).get(b, {}).get("drop")
            cells.append(f"{s} / " + (f"{c:>8.3f}" if c is not None else f"{'':>8}") if a != b or c is not None
                         else f"{'—':>22}")
        lines.append(f"{a:<14}" + "".join(cells))
    return "\n".join(lines)
