"""`mechmerge plot`: the figures of a scores file or a track file, chosen by the file's format.

Kept free of torch and matplotlib at import time (the options are read by `--help`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from ..options import Options, opt

TRACK_KEYS = ("checkpoints", "top", "top_k", "transitions", "patch_in")


@dataclass
class PlotOptions(Options):
    file: str = field(metadata=opt("A scores file or a track file.", argument=True, metavar="FILE"))
    out: Optional[str] = field(default=None, metadata=opt("Folder for the PNGs (default: next to FILE)."))
    top: int = field(default=15, metadata=opt("Units per panel of the interval plots.", min=1))


def plot(opts: PlotOptions) -> List[Path]:
    """Heatmaps per expert (and, with bootstrap intervals, each expert's top units) for a scores
    file; the top units across checkpoints for a track file. Returns the PNGs written."""
    from ..io import read_json

    p = Path(opts.file)
    data = read_json(p, "file")
    out = Path(opts.out) if opts.out else p.parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder for the PNGs")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == "mechmerge.scores":
        from ..scores import validate_scores
        from .heatmap import plot_scores
        from .intervals import plot_intervals

        validate_scores(data, opts.file)
        return plot_scores(data, out) + plot_intervals(data, out, k=opts.top)
    if fmt == "mechmerge.track":
        from .track import plot_track

        missing = [k for k in TRACK_KEYS if k not in data]
        if missing:
            raise UserError(f"{opts.file}: track file lacks {missing[0]!r} (written by `mechmerge track`?)")
        return [plot_track(data, out, f"{p.stem}.png")]  # track-rev.json -> track-rev.png
    got = f"format {fmt!r}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    raise UserError(f"{opts.file}: expected a mechmerge scores or track file, got {got}")
