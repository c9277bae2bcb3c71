"""`mechmerge zoo`: build a tiny model zoo and print how good its models are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import click

from ..options import Options, click_options, opt


@dataclass
class ZooOptions(Options):
    # the choices are the names in mechmerge.zoo.build.ZOOS (a test keeps them equal);
    # spelled out here so that `--help` does not import torch
    name: Literal["alpha", "beta"] = field(default="alpha", metadata=opt("Which zoo to build."))
    out: Optional[str] = field(default=None, metadata=opt(
        "Output directory (default: the cache, $MECHMERGE_CACHE/zoo/NAME or ~/.cache/mechmerge/zoo/NAME).",
        metavar="DIR"))
    seed: Optional[int] = field(default=None, metadata=opt("Random seed (default: the zoo's own)."))
    force: bool = field(default=False, metadata=opt("Overwrite an existing zoo directory."))
    progress: bool = field(default=True, metadata=opt("Show a progress bar."))


def run(opts: ZooOptions) -> Path:
    """Build the zoo, print its accuracy table, return its directory."""
    from ..patching.progress import Progress
    from ..zoo import cache_dir, manifest
    from ..zoo.build import build_zoo

    out = Path(opts.out) if opts.out else cache_dir(opts.name)
    with Progress(opts.progress) as bar:
        path = build_zoo(opts.name, out, seed=opts.seed, force=opts.force, progress=bar)
    click.echo(table(manifest(path)))
    click.echo(f"zoo {opts.name!r} written to {path}")
    return path


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def table(m: Dict[str, Any]) -> str:
    """Skill x (base accuracy, expert accuracy, the expert's accuracy on each general skill)."""
    acc, general = m["accuracy"], m["general"]
    head = ["skill", "nature", "base", "expert", *[f"keeps {g}" for g in general]]
    rows = [[g, m["skills"][g]["nature"], pct(acc["base"][g]), "-", *["-"] * len(general)] for g in general]
    for s in m["specialists"]:
        e = acc["experts"][s]
        rows.append([s, m["skills"][s]["nature"], pct(acc["base"][s]), pct(e[s]), *[pct(e[g]) for g in general]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"zoo {m['name']} (seed {m['seed']}), greedy exact match on the {acc['split']} split, "
             f"built in {m['build']['seconds']:.0f} s"]
    for r in [head, *rows]:
        lines.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


@click.command()
@click_options(ZooOptions)
def zoo(**kwargs):
    """Build the embedded model zoo: a base model, specialists fine-tuned from it, probes.

    \b
    alpha (shipped in the package): rev, shift, sort, add
    beta  (built on demand):        swap, upper, dedup, count
    Both share the general skills copy and twice, which every specialist keeps.
    """
    run(ZooOptions.from_cli(**kwargs))
