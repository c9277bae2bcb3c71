import click

from ..options import click_options
from ..models.gguf import ImportGGUFOptions


@click.command("import-gguf")
@click_options(ImportGGUFOptions)
def import_gguf(**kwargs):
    """Import a GGUF checkpoint as a Hugging Face model directory.

    Dequantizes every tensor and writes config.json, model.safetensors, the tokenizer
    with its chat template, generation_config.json and import_gguf.json (source and
    checks). Before the directory appears it is reloaded and checked: logits equal the
    GGUF model's, mechmerge and mergekit accept it.
    """
    from ..models.gguf import import_gguf as run

    run(ImportGGUFOptions.from_cli(**kwargs), log=lambda msg: click.echo(msg, err=True))
