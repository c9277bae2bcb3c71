import click

from ..merge.run import MergeRunOptions
from ..options import click_options


@click.command()
@click_options(MergeRunOptions)
def merge(**kwargs):
    """Merge with mergekit's engine and write a model card.

    The tensors are identical to `mergekit-yaml RECIPE OUT`. The model is built in a
    temporary directory and moved into place only when complete.
    """
    from ..merge.run import merge as run

    out = run(MergeRunOptions.from_cli(**kwargs))
    click.echo(f"merged model written to {out}", err=True)
