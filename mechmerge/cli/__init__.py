"""The `mechmerge` command line.

Commands live one per module in this folder and are imported only when invoked, so
`mechmerge --help` stays fast (no torch import). A `UserError` anywhere becomes a
one-line message and exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from ..errors import UserError

# command name -> ("module:function" relative to mechmerge.cli, the line `mechmerge --help` shows).
# The line is kept here because listing it from the command itself imports the command's module,
# and with it torch (2 s before any help appears); tests check each entry resolves to its command.
COMMANDS = {
    "score": ("score:score", "Score every unit of every expert by Weight Patching."),
    "recipe": ("recipe:recipe", "Turn a scores file into per-module merge weights (mergekit YAML)."),
    "merge": ("merge:merge", "Merge with mergekit's engine and write a model card."),
    "eval": ("evaluate:evaluate", "Evaluate a model: greedy accuracy, log-probability, confidence bands."),
    "compare": ("compare:compare", "Compare guided strategies with tuned uniform merges on a suite."),
    "publish": ("publish:publish", "Upload a merged model (weights, tokenizer, model card) to the Hub."),
    "plot": ("plot:plot", "Draw a scores file (heatmaps, intervals) or a track file."),
    "track": ("track:track", "Track the top units across fine-tuning checkpoints."),
    "conflict": ("conflict:conflict", "Circuit conflict between experts: static overlap and causal drop."),
    "agree": ("agree:agree", "How well one scores file reproduces another."),
    "zoo": ("zoo:zoo", "Build the embedded model zoo: a base model and specialists."),
    "demo": ("demo:demo", "Run score -> recipe -> merge -> eval on the embedded zoo."),
    "import-gguf": ("import_gguf:import_gguf", "Import a GGUF checkpoint as a Hugging Face model directory."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(f"mechmerge.cli.{module}") is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(f"mechmerge.cli.{module}"), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="mechmerge")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Model merging guided by mechanistic scores.

    \b
    Typical use:
      mechmerge score --base B --expert a=A --probes a=a.jsonl --out scores.json
      mechmerge recipe scores.json --out recipe.yaml
      mechmerge merge recipe.yaml --out merged/
      mechmerge eval merged/ --probes a=a_test.jsonl
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="mechmerge", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


# mechmerge never needs the Hub's usage telemetry; a user can still turn it on explicitly.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
