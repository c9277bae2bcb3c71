"""`mechmerge merge RECIPE --out DIR`: mergekit's engine, an atomic output dir, a model card."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..errors import UserError
from ..io import atomic_dir, check_output, file_sha256, read_json
from ..options import Options, opt
from ..recipe.build import RANDOM_METHODS
from . import engine
from .card import (minimal_card, model_refs, render_card, scores_path_from_recipe, scores_sha_from_recipe,
                   seed_from_recipe)


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


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _card(name: str, text: str, cfg: Dict[str, Any], scores, evaluation, warn: Callable[[str], None]) -> str:
    """The model card, written before the merge runs: a card that cannot be written in full
    costs a warning and a minimal card, never a finished merge."""
    try:
        return render_card(name, text, cfg, scores, evaluation)
    except Exception as e:
        warn(f"the model card could not be written in full ({type(e).__name__}: {e}); the merge gets a minimal card "
             "with the recipe. Please report this with the recipe.")
        return minimal_card(name, text, cfg)


def read_evaluation(path: str) -> Dict[str, Any]:
    evaluation = read_json(path, "--eval file")
    tasks = evaluation.get("tasks") if isinstance(evaluation, dict) else None
    if not isinstance(tasks, dict) or not tasks or not all(
            isinstance(t, dict) and {"accuracy", "logprob", "n"} <= set(t) for t in tasks.values()):
        raise UserError(f"--eval {path!r}: not a `mechmerge eval --json` file (expected 'tasks' with "
                        "accuracy, logprob and n per task)")
    return evaluation


def card_with_evaluation(model_dir: Path, eval_json: str) -> str:
    """DIR's model card with the evaluation in it, as `merge --eval` would have written it: so an
    evaluation made after the merge reaches the card without merging again."""
    from .card import with_evaluation

    return with_evaluation((model_dir / "README.md").read_text(encoding="utf-8"), read_evaluation(eval_json))


def merge(opts: MergeRunOptions, warn: Callable[[str], None] = _warn) -> Path:
    cfg = engine.load_recipe_yaml(opts.recipe)
    text = Path(opts.recipe).read_text()
    engine.validate(cfg)  # every problem surfaces before we touch the output
    scores_path = opts.scores or scores_path_from_recipe(text)
    models = [p.path for r in engine.parse_config(cfg).referenced_models() for p in (r.model, r.lora) if p]
    inputs = [opts.recipe, scores_path, opts.eval_json, *models]
    out = check_output(opts.out, opts.force, "output directory", directory=True, inputs=inputs,
                       looks_like="config.json")
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
    evaluation = read_evaluation(opts.eval_json) if opts.eval_json else None
    shard = _shard_bytes(opts.out_shard_size)
    if not cfg.get("base_model") and len(model_refs(cfg)) > 1:
        # mergekit then copies config.json, the tokenizer and generation_config from
        # referenced_models()[0], a set's order: a different input from one run to the next
        warn(f"{opts.recipe} has no base_model: mergekit takes config.json and the tokenizer from an arbitrary input "
             "(it can change between runs); add `base_model:` naming the model they should come from (for a linear "
             "merge, one of its models; the weights do not change)")
    seed = opts.seed if opts.seed is not None else seed_from_recipe(text)
    if seed is None and cfg.get("merge_method") in RANDOM_METHODS:
        warn(f"{cfg['merge_method']} drops parameters at random and neither --seed nor the recipe names a seed: "
             "this merge differs from run to run; pass --seed N to make it reproducible")
    card = _card(out.name, text, cfg, scores, evaluation, warn)
    with atomic_dir(out, force=opts.force) as tmp:
        engine.run_to_dir(text, str(tmp), cuda=opts.cuda, out_shard_size=shard, lazy_unpickle=opts.lazy_unpickle,
                          random_seed=seed)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if scores_path and scores is not None:
            shutil.copyfile(scores_path, tmp / "mechmerge_scores.json")
    return out
