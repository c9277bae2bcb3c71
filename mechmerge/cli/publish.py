import click

from ..merge.publish import PublishOptions
from ..options import click_options


@click.command()
@click_options(PublishOptions)
def publish(**kwargs):
    """Upload a merged model (weights, tokenizer, model card, scores) to the Hub."""
    from ..merge.publish import publish as run

    run(PublishOptions.from_cli(**kwargs), echo=lambda s: click.echo(s, err=True))
