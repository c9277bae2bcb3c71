import click

from ..options import click_options
from ..report.plot import PlotOptions


@click.command()
@click_options(PlotOptions)
def plot(**kwargs):
    """Draw a scores file (heatmap per expert: layer x module type; with --bootstrap
    scores also each expert's top units with their intervals and ties) or a track file
    (how the top units move across checkpoints)."""
    from ..report.plot import plot as run

    for path in run(PlotOptions.from_cli(**kwargs)):
        click.echo(str(path))
