import click

from ..analysis.track import TrackOptions
from ..options import click_options


@click.command()
@click_options(TrackOptions)
def track(**kwargs):
    """Track the top units across fine-tuning checkpoints: circuit distance,
    stability and faithfulness of earlier maps, with random and magnitude controls."""
    from ..analysis.track import track as run

    run(TrackOptions.from_cli(**kwargs))
    click.echo(f"wrote {kwargs['out']}; draw it with `mechmerge plot {kwargs['out']}`", err=True)
