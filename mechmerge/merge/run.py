"""`mechmerge merge RECIPE --out DIR`: mergekit's engine, an atomic output dir, a model card."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..io import atomic_dir, check_output, file_sha256, read_json
from ..options import Options, opt
from . import engine
from .card import render_card, scores_path_from_recipe, scores_sha_from_recipe, seed_from_recipe


@dataclass
class MergeRunOptions(Options):
    recipe: str = field(metadata=opt("mergekit YAML (from `mechmerge recipe` or hand-written).", argument=True,
                                     metavar="RECIPE"))
    out: str = field(metadata=opt("Output model directory."))
    cuda: bool = field(default=False, metadata=opt("Do the merge arithmetic on the GPU (mergekit --cuda)."))
    out_shard_size: Optional[str] = field(default=None, metadata=opt(
        "Maximum shard size, e.g. 5B, 500M (mergekit --out-shard-size)."))
    lazy_unpickle: bool = field(default=False, metadata=opt("mergekit's lazy unpickler for pickle checkpoints."))
    scores: Optional[str] = field(default=None, metadata=opt(
        "Scores JSON for the model card (default: the one named in the recipe header)."))
    eval_json: Optional[str] = field(default=None, metadata=opt(
        "`mechmerge eval --json` output to include in the model card.", flag="eval"))
    seed: Optional[int] = field(default=None, metadata=opt(
        "Seed for random methods' masks (mergekit --random-seed; default: the recipe header's, if any)."))
    force: bool = field(default=False, metadata=opt("Replace a non-empty output directory."))


def _shard_bytes(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    from mergekit.common import parse_kmb

    try:
        return int(parse_kmb(text))
    except Exception:
        raise UserError(f"--out-shard-size {text!r}: expected a size like 5B, 500M or 1000000") from None


def merge(opts: MergeRunOptions) -> Path:
    cfg = engine.load_recipe_yaml(opts.recipe)
    text = Path(opts.recipe).read_text()
    engine.validate(cfg)  # every problem surfaces before we touch the output
    out = check_output(opts.out, opts.force, "output directory", directory=True)
    scores_path = opts.scores or scores_path_from_recipe(text)
    scores = None
    if scores_path and Path(scores_path).is_file():
        from ..scores import read_scores

        recorded = scores_sha_from_recipe(text)
        if recorded and file_sha256(scores_path) != recorded:
            # the card would explain the weights with scores they were not made from
            raise UserError(f"{scores_path} changed since the recipe was written from it (sha256 differs from the "
                            "header's); rewrite the recipe, or pass --scores with the file it was made from")
        scores = read_scores(scores_path)
    elif opts.scores:
        raise UserError(f"scores file {opts.scores!r} not found")
    evaluation = None
    if opts.eval_json:
        evaluation = read_json(opts.eval_json, "--eval file")
        tasks = evaluation.get("tasks") if isinstance(evaluation, dict) else None
        if not isinstance(tasks, dict) or not tasks or not all(
                isinstance(t, dict) and {"accuracy", "logprob", "n"} <= set(t) for t in tasks.values()):
            raise UserError(f"--eval {opts.eval_json!r}: not a `mechmerge eval --json` file (expected 'tasks' with "
                            "accuracy, logprob and n per task)")
    shard = _shard_bytes(opts.out_shard_size)
    with atomic_dir(out, force=opts.force) as tmp:
        engine.run_to_dir(text, str(tmp), cuda=opts.cuda, out_shard_size=shard, lazy_unpickle=opts.lazy_unpickle,
                          random_seed=opts.seed if opts.seed is not None else seed_from_recipe(text))
        (tmp / "README.md").write_text(render_card(out.name, text, cfg, scores, evaluation), encoding="utf-8")
        if scores_path and scores is not None:
            shutil.copyfile(scores_path, tmp / "mechmerge_scores.json")
    return out
