"""`mechmerge publish DIR --repo ID`: upload a merged model folder to the Hugging Face Hub.

The token comes from HF_TOKEN or the stored `huggingface-cli login`; it is passed to
the client and never printed, logged or written anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

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
    eval_json: Optional[str] = field(default=None, metadata=opt(
        "`mechmerge eval --json` output to add to the model card first (DIR/README.md is rewritten, as "
        "`merge --eval` would have written it; not with --dry-run).", flag="eval"))


# Hidden files and folders stay home: `.*` matches a hidden top-level entry (and all under it),
# `*/.*` one further down (fnmatch's `*` crosses '/'). The client adds its own (.git, .cache).
IGNORE = [".*", "*/.*"]
# Text files small enough to read for local paths (a large tokenizer.json holds none)
TEXT_SUFFIXES = (".md", ".json", ".yml", ".yaml", ".txt", ".jinja")
# An absolute path of two or more parts, e.g. /home/me/models/base (a URL's //host/x is not one)
LOCAL_PATH = re.compile(r"(?<![\w./:~-])~?/[\w.@+-]+/[\w.@+-]+")


def files_to_send(model_dir: Path) -> List[Tuple[str, int]]:
    """(path relative to `model_dir`, bytes) of exactly what `upload_folder` sends: the same
    listing (files under the folder, '/'-separated) through the client's own filter."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    rel = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.glob("**/*")) if p.is_file()}
    sent = filter_repo_objects(rel, ignore_patterns=IGNORE + DEFAULT_IGNORE_PATTERNS)
    return [(r, rel[r].stat().st_size) for r in sent]


def files_with_local_paths(model_dir: Path, files: List[Tuple[str, int]]) -> List[str]:
    """The text files about to be published that name absolute local paths (mergekit_config.yml
    and mechmerge_scores.json record where the inputs were; the model card does not)."""
    return [name for name, size in files if name.endswith(TEXT_SUFFIXES) and size <= 2**20
            and LOCAL_PATH.search((model_dir / name).read_text(encoding="utf-8", errors="replace"))]


def check_model_dir(d: Path) -> None:
    if not d.is_dir():
        raise UserError(f"{str(d)!r} is not a directory")
    if not (d / "config.json").is_file():
        raise UserError(f"{str(d)!r} has no config.json; publish a directory written by `mechmerge merge`")
    if not any(d.glob("*.safetensors")):
        raise UserError(f"{str(d)!r} has no *.safetensors weights")
    if not (d / "README.md").is_file():
        raise UserError(f"{str(d)!r} has no model card (README.md); `mechmerge merge` writes one")


def check_card_metadata(d: Path) -> None:
    """The Hub refuses a README whose `base_model` is not a model id, and only once the upload
    has started; cards from earlier mechmerge versions listed the base's local folder there."""
    import yaml

    from .card import hub_ids, parse_front_matter

    try:
        meta = parse_front_matter((d / "README.md").read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError:
        raise UserError(f"{d / 'README.md'}: its front matter (between the '---' lines) is not valid YAML") from None
    bases = meta.get("base_model") if isinstance(meta, dict) else None
    for b in bases if isinstance(bases, list) else [bases] if bases is not None else []:
        if not isinstance(b, str) or hub_ids(b) != [b]:
            raise UserError(f"{d / 'README.md'}: base_model lists {b!r}, which is not a Hub model id, and the Hub "
                            "refuses the card; remove it from the front matter (cards from `mechmerge merge` now list "
                            "Hub ids only)")


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
        check_credentials()  # before the card is rewritten: a refused publish changes nothing
    if opts.eval_json:
        from ..io import atomic_write_text
        from .run import card_with_evaluation

        card = card_with_evaluation(d, opts.eval_json)
        if opts.dry_run:
            echo(f"would add {opts.eval_json} to the model card")
        else:
            atomic_write_text(d / "README.md", card)
            echo(f"added {opts.eval_json} to the model card {d / 'README.md'}")
    check_card_metadata(d)
    files = files_to_send(d)
    total = sum(s for _, s in files)
    echo(f"{'would upload' if opts.dry_run else 'uploading'} {len(files)} files ({total / 2**20:.1f} MiB) "
         f"to {opts.repo}{' (private)' if opts.private else ''}")
    for name, size in files:
        echo(f"  {name}  {size / 2**20:.2f} MiB")
    local = files_with_local_paths(d, files)
    if local:
        echo(f"warning: {', '.join(local)} name{'s' if len(local) == 1 else ''} absolute paths on this machine "
             "(the record of the merge's inputs); they are uploaded as they are")
    if opts.dry_run:
        return files
    api = make_api()
    try:
        api.create_repo(repo_id=opts.repo, private=opts.private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(d), repo_id=opts.repo, repo_type="model", commit_message=opts.message,
                          ignore_patterns=list(IGNORE))
    except Exception as e:
        raise UserError(f"upload to {opts.repo} failed: {_reason(e)}") from None
    echo(f"published https://huggingface.co/{opts.repo}")
    return files


def _reason(e: Exception) -> str:
    """What the Hub said, on one line, with anything token-like masked (the client's HTTP errors
    carry the server's message, e.g. 'Invalid metadata in README.md. - "base_model" ...'), then a
    hint by status."""
    from huggingface_hub import get_token

    msg = str(e) or getattr(e, "server_message", None) or "no message"
    token = get_token()
    if token:
        msg = msg.replace(token, "***")
    msg = re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", msg)
    msg = re.sub(r"(?i)(bearer\s+|authorization:\s*)\S+", r"\1***", msg)
    msg = " ".join(msg.split())[:600]
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        hint = "; check your login (`hf auth login` or HF_TOKEN) and your rights on the repository"
    elif status is None and not isinstance(e, ValueError):
        hint = "; check your network"
    else:
        hint = ""
    return f"{type(e).__name__}: {msg}{hint}"
