import click

from ..evaluate.compare import CompareOptions
from ..options import click_options


@click.command()
@click_options(CompareOptions)
def compare(**kwargs):
    """Compare guided strategies with tuned uniform merges on every 2- and 3-expert
    combination of a suite; writes results.md, results.json and results.png."""
    from ..evaluate.compare import compare as run
    from ..evaluate.report import markdown

    data = run(CompareOptions.from_cli(**kwargs))
    if "shard" in data:  # a shard only fills the cache
        click.echo(f"shard {data['shard']}: {len(data['combinations'])} combinations cached "
                   f"({', '.join(data['combinations']) or 'none'}); run without --shard to write the results")
    else:
        click.echo(markdown(data))
