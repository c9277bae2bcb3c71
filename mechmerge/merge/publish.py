"""`mechmerge publish DIR --repo ID`: upload a merged model folder to the Hugging Face Hub.

The token comes from HF_TOKEN or the stored `huggingface-cli login`; it is passed to
the client and never printed, logged or written anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

from ..errors import UserError
from ..options import Options, opt

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class PublishOptions(Options):
    model_dir: str = field(metadata=opt("Merged model directory (from `mechmerge merge`).", argument=True, metavar="DIR"))
    repo: str = field(metadata=opt("Hub repository id, e.g. you/my-merge."))
    private: bool = field(default=False, metadata=opt("Create the repository as private."))
    dry_run: bool = field(default=False, metadata=opt("List what would be uploaded and stop."))
    message: str = field(default="Upload merge made with mechmerge", metadata=opt("Commit message."))


def files_to_send(model_dir: Path) -> List[Tuple[str, int]]:
    return sorted((str(p.relative_to(model_dir)), p.stat().st_size)
                  for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


def check_model_dir(d: Path) -> None:
    if not d.is_dir():
        raise UserError(f"{str(d)!r} is not a directory")
    if not (d / "config.json").is_file():
        raise UserError(f"{str(d)!r} has no config.json; publish a directory written by `mechmerge merge`")
    if not any(d.glob("*.safetensors")):
        raise UserError(f"{str(d)!r} has no *.safetensors weights")
    if not (d / "README.md").is_file():
        raise UserError(f"{str(d)!r} has no model card (README.md); `mechmerge merge` writes one")


def make_api():
    """The Hub client; a seam so tests can stand in a local fake."""
    from huggingface_hub import HfApi

    return HfApi()


def check_credentials() -> None:
    """Say what is missing before listing files and contacting the Hub (which would answer
    offline mode or a missing login with a failure after the listing)."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish (or use --dry-run to see what would be sent)")
    from huggingface_hub import get_token

    if not get_token():
        raise UserError("no Hub token: set HF_TOKEN or log in with `hf auth login`")


def publish(opts: PublishOptions, echo=print) -> List[Tuple[str, int]]:
    d = Path(opts.model_dir)
    check_model_dir(d)
    if not REPO_ID.match(opts.repo):
        raise UserError(f"--repo {opts.repo!r} is not a Hub repository id like 'owner/name'")
    if not opts.dry_run:
        check_credentials()
    files = files_to_send(d)
    total = sum(s for _, s in files)
    echo(f"{'would upload' if opts.dry_run else 'uploading'} {len(files)} files ({total / 2**20:.1f} MiB) "
         f"to {opts.repo}{' (private)' if opts.private else ''}")
    for name, size in files:
        echo(f"  {name}  {size / 2**20:.2f} MiB")
    if opts.dry_run:
        return files
    api = make_api()
    try:
        api.create_repo(repo_id=opts.repo, private=opts.private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(d), repo_id=opts.repo, repo_type="model", commit_message=opts.message,
                          ignore_patterns=[".*"])
    except Exception as e:  # the client's message may quote request headers: show the type only
        raise UserError(f"upload to {opts.repo} failed ({type(e).__name__}); check your login "
                        "(`hf auth login` or HF_TOKEN) and network") from None
    echo(f"published https://huggingface.co/{opts.repo}")
    return files
