from pathlib import Path

import click

from ..errors import UserError


@click.command()
@click.argument("file", type=click.Path())
@click.option("--out", "out_dir", default=None, help="Folder for the PNGs (default: next to FILE).")
@click.option("--top", default=15, show_default=True, type=click.IntRange(min=1),
              help="Units per panel of the interval plots.")
def plot(file, out_dir, top):
    """Draw a scores file (heatmap per expert: layer x module type; with --bootstrap
    scores also each expert's top units with their intervals and ties) or a track file
    (how the top units move across checkpoints)."""
    from ..io import read_json

    p = Path(file)
    data = read_json(p, "file")
    out = Path(out_dir) if out_dir else p.parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder for the PNGs")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == "mechmerge.scores":
        from ..report.heatmap import plot_scores
        from ..scores import validate_scores

        validate_scores(data, file)
        paths = plot_scores(data, out)
        from ..report.intervals import plot_intervals

        paths += plot_intervals(data, out, k=top)
    elif fmt == "mechmerge.track":
        from ..report.track import plot_track

        missing = [k for k in ("checkpoints", "top", "top_k", "transitions", "patch_in") if k not in data]
        if missing:
            raise UserError(f"{file}: track file lacks {missing[0]!r} (written by `mechmerge track`?)")
        paths = [plot_track(data, out, f"{p.stem}.png")]  # track-rev.json -> track-rev.png
    else:
        got = f"format {fmt!r}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise UserError(f"{file}: expected a mechmerge scores or track file, got {got}")
    for path in paths:
        click.echo(str(path))
