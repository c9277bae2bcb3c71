"""Where the stages find each other's outputs, and small file helpers they share.

    data/<constraint>/<split>.jsonl    probes (data stage); plain/<split>.jsonl: the base's own answers
    experts/<constraint>/              one specialist per constraint (finetune stage), HF model dirs
    experts/checkpoints/<name>/        intermediate checkpoints of one specialist (for mechmerge track)
    experts/finetune.json              per specialist: steps, seconds, losses, dev pass rate before/after
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict

from .runner import Context

# Files a model dir needs besides what save_pretrained writes: the tokenizer and chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")


REPO = Path(__file__).resolve().parents[2]


def publish_dir(ctx: Context, stage: str) -> Path:
    """Where a stage copies its small, committed results: eval/real/results/<model>/ (or
    `--set STAGE.publish=DIR`)."""
    d = Path(ctx.param(f"{stage}.publish", str(REPO / "eval" / "real" / "results" / ctx.model.name)))
    d.mkdir(parents=True, exist_ok=True)
    return d


EVAL_DTYPES = ("bfloat16", "float32")


def eval_dtype_of(ctx: Context, stage: str):
    """The dtype a stage generates and scores evaluations in (`--set STAGE.eval_dtype=`).
    bfloat16 by default: greedy generation is 1.8-2.5x faster on this CPU (AVX512-BF16), and on
    a LoRA uppercase specialist's 48 dev prompts it passed the same 0.9375 as float32, with the
    log-probability of the base's answers 0.002 apart. Every model of a stage is evaluated in
    the same dtype; Weight Patching and calibration stay float32."""
    import torch

    name = ctx.param(f"{stage}.eval_dtype", "bfloat16")
    if name not in EVAL_DTYPES:
        from mechmerge.errors import UserError

        raise UserError(f"--set {stage}.eval_dtype={name}: expected one of {', '.join(EVAL_DTYPES)}")
    return getattr(torch, name)


def probes_file(ctx: Context, constraint: str, split: str) -> Path:
    p = ctx.artifact("data") / constraint / f"{split}.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing; was the data stage run with data.constraints including {constraint}?")
    return p


def experts(ctx: Context) -> Dict[str, Path]:
    """Specialist name (= its constraint) -> model dir, in training order."""
    summary = json.loads((ctx.artifact("finetune") / "finetune.json").read_text())
    return {name: ctx.artifact("finetune") / name for name in summary["specialists"]}


def finetune_summary(ctx: Context) -> Dict[str, Any]:
    return json.loads((ctx.artifact("finetune") / "finetune.json").read_text())


def save_model(model, base_dir: Path, out: Path) -> None:
    """`model` as a plain HF model dir (safetensors) with the base's tokenizer files verbatim."""
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (base_dir / f).is_file():
            shutil.copyfile(base_dir / f, out / f)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of `src` under `dst` (a copy where links are impossible): the
    stage's artifact gets the files without doubling the disk they take."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        link_tree_file(f, target)


def link_tree_file(src: Path, dst: Path) -> None:
    """One file of `link_tree`: hard-linked, or copied where links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_json(path: Path, obj: Any) -> None:
    from mechmerge.io import atomic_write_text, dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(obj))
