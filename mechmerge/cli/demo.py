"""`mechmerge demo`: the whole pipeline on the embedded zoo (mechmerge/zoo/demo.py)."""

import sys

import click

from ..options import click_options
from ..zoo.demo import DemoOptions


@click.command()
@click_options(DemoOptions)
def demo(**kwargs):
    """Run score -> recipe -> merge -> eval on the embedded zoo and print guided vs uniform."""
    from ..zoo.demo import run_demo

    run_demo(DemoOptions.from_cli(**kwargs))
    sys.stderr.flush()
