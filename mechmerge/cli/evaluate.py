import click

from ..evaluate.run import EvalOptions
from ..options import click_options


@click.command()
@click_options(EvalOptions)
def evaluate(**kwargs):
    """Evaluate a model: greedy accuracy, log-probability and accuracy by confidence quartile."""
    from ..evaluate.run import evaluate as run, format_table

    data = run(EvalOptions.from_cli(**kwargs))
    click.echo(format_table(data))
