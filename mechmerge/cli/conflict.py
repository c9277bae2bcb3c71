import click

from ..analysis.conflict import ConflictOptions
from ..options import click_options


@click.command()
@click_options(ConflictOptions)
def conflict(**kwargs):
    """Circuit conflict between experts: overlap of their top-K units times sign
    disagreement of their task vectors, and the causal drop on one expert when the
    other's top-K units are reverted."""
    from ..analysis.conflict import conflict as run, table

    click.echo(table(run(ConflictOptions.from_cli(**kwargs))))
