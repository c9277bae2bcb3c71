import click

from ..options import click_options
from ..patching.score import ScoreOptions


@click.command()
@click_options(ScoreOptions)
def score(**kwargs):
    """Score every unit of every expert by Weight Patching.

    Writes a scores JSON (see README, "Scores file") with patch_in, knockout and
    anchor per unit and expert.
    """
    from ..patching.score import score as run

    run(ScoreOptions.from_cli(**kwargs))
