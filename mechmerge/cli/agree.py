import click

from ..analysis.agreement import AgreeOptions
from ..options import click_options


@click.command()
@click_options(AgreeOptions)
def agree(**kwargs):
    """How well one scores file reproduces another (e.g. hybrid or attribution against
    exact): Spearman correlation, top-K overlap and largest difference per expert and score."""
    from ..analysis.agreement import agree as run, table

    click.echo(table(run(AgreeOptions.from_cli(**kwargs))))
