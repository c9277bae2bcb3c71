import click

from ..options import click_options
from ..recipe.build import RecipeOptions


def _epilog() -> str:
    from ..recipe import strategies

    lines = ["\b", "Strategies (--strategy NAME, --param NAME=VALUE):"]
    for name in strategies.STRATEGIES:
        s = strategies.get(name)
        params = ", ".join(f"{k}={p.default}" for k, p in s.params.items())
        lines.append(f"  {name:<10} {s.doc.splitlines()[0] if s.doc else ''}")
        lines.append(f"  {'':<10} parameters: {params or 'none'}")
    return "\n".join(lines)


class _RecipeCommand(click.Command):
    def format_epilog(self, ctx, formatter):
        self.epilog = _epilog()
        super().format_epilog(ctx, formatter)


@click.command(cls=_RecipeCommand)
@click_options(RecipeOptions)
def recipe(**kwargs):
    """Turn a scores file into per-module merge weights, written as mergekit YAML.

    The YAML runs unchanged with `mergekit-yaml RECIPE OUT` and is validated with
    mergekit's planner before it is written.
    """
    from ..recipe.build import make_recipe

    r = make_recipe(RecipeOptions.from_cli(**kwargs))
    click.echo(f"wrote {kwargs['out']}: strategy {r.strategy} {r.params}, score {r.score}, "
               f"{len(r.experts)} experts x {len(r.units)} units", err=True)
