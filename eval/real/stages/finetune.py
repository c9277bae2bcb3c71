"""Stage `finetune`: one instruction-following specialist per constraint.

Default constraints: uppercase, json, end_phrase, bullets. They ask for clearly different
things, so a merge has to keep four separate mechanisms: a character-level rewrite of every
token (uppercase), a wrapper around the whole answer (json: an opening `{"answer": "`, escaping,
a closing `"}`), a fixed ending (end_phrase: stopping only after the phrase) and a layout
(bullets: counting to n and cutting the answer into lines). Left out: lowercase (the mirror
image of uppercase, the same mechanism with the opposite sign) and no_commas (a deletion the
base already half-does on its own: 8% of SmolLM2's and 65% of Gemma's plain answers pass).

Each specialist starts from the base and is trained with `train.train` (AdamW, loss on the
assistant tokens, a quarter of every batch the base's own plain answers as replay, fixed
data order from the seed). Work happens in `.work/finetune/<name>/`: the optimizer state
is checkpointed every few steps, a finished specialist is kept there, so a killed stage
resumes inside the specialist it was training and never retrains a finished one. The
artifact hard-links the finished model dirs.

Artifact:
    <name>/                         plain HF model dir (safetensors, tokenizer, chat template)
    checkpoints/<name>-step<k>/     two intermediate checkpoints of one specialist
    finetune.json                   per specialist: steps, seconds, losses, dev pass rates
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from mechmerge.io import atomic_dir
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model, load_tokenizer
from mechmerge.probes import load_probes

from .. import metrics
from ..artifacts import link_tree, probes_file, save_model, write_json
from ..runner import Context, stage
from ..train import FinetuneConfig, train

DEFAULT_CONSTRAINTS = "uppercase,json,end_phrase,bullets"


def dev_pass_rate(model, family, tok, dev: Path, name: str, max_new: int, limit: int | None) -> Dict[str, Any]:
    """Greedy pass rate of the verifier on the dev split (mechmerge's evaluator)."""
    from mechmerge.evaluate.run import Evaluator

    ev = Evaluator({name: str(dev)}, tok, {name: metrics.name_of(name)}, batch_size=48, max_new_tokens=max_new,
                   max_probes=limit)
    t0 = time.perf_counter()
    r = ev.run(model, family)[name]
    return {"pass_rate": r["accuracy"], "n": r["n"], "logprob": r["logprob"], "seconds": time.perf_counter() - t0}


def train_one(ctx: Context, name: str, cfg: FinetuneConfig, keep_at: List[int], max_new: int,
              dev_limit: int | None, max_train: int | None) -> Dict[str, Any]:
    """Train (or resume, or reuse) the specialist for `name`; returns its record."""
    wd = ctx.work("finetune") / name
    wd.mkdir(parents=True, exist_ok=True)
    record_file = wd / "result.json"
    if record_file.is_file() and (wd / "model" / "config.json").is_file():
        ctx.log(f"  {name}: finished earlier, reused from {wd}")
        return json.loads(record_file.read_text())
    base_dir = ctx.artifact("import")
    ck = Checkpoint.open(str(base_dir), label="base")
    torch.manual_seed(cfg.seed)
    model = load_model(ck, torch.device("cpu"), torch.float32)
    tok = load_tokenizer([ck])
    dev = probes_file(ctx, name, "dev")
    before_file = wd / "dev_before.json"
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        before = dev_pass_rate(model, ck.family, tok, dev, name, max_new, dev_limit)
        write_json(before_file, before)
    ctx.log(f"  {name}: base passes {before['pass_rate']:.3f} of {before['n']} dev probes")
    task = load_probes(probes_file(ctx, name, "train"), limit=max_train)
    replay = load_probes(probes_file(ctx, "plain", "train"))

    def keep(step: int, loss: float) -> None:
        if step in keep_at:
            target = wd / "checkpoints" / f"{name}-step{step}"
            if not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_dir(target) as tmp:
                    save_model(model, base_dir, tmp)
                ctx.log(f"  {name}: kept checkpoint {target.name}")

    run = train(model, tok, task, replay, cfg, wd, on_step=keep if keep_at else None,
                log=lambda m: ctx.log(f"  {name}: {m}"), sources=(str(probes_file(ctx, name, "train")), "plain/train"))
    after = dev_pass_rate(model, ck.family, tok, dev, name, max_new, dev_limit)
    ctx.log(f"  {name}: {run['steps']} steps in {run['seconds']:.0f}s, final loss {run['final_loss']:.4f}; "
            f"dev pass rate {before['pass_rate']:.3f} -> {after['pass_rate']:.3f}")
    out = wd / "model"
    if out.exists():
        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        save_model(model, base_dir, tmp)
    record = {"name": name, "steps": run["steps"], "seconds": run["seconds"], "first_loss": run["first_loss"],
              "final_loss": run["final_loss"], "resumed_at": run["resumed_at"], "n_train": len(task),
              "n_replay_pool": len(replay), "dev_before": before, "dev_after": after, "config": run["config"],
              "checkpoints": [f"{name}-step{k}" for k in keep_at]}
    write_json(wd / "log.json", run["log"])
    write_json(record_file, record)
    (wd / "state.pt").unlink(missing_ok=True)  # 3x the model's size; the finished model replaces it
    return record


@stage("finetune", artifact="experts", requires=("data",), stamp_work=True, volatile=("constraints",))
def finetune(ctx: Context, out: Path) -> Dict[str, Any]:
    """One specialist per constraint (resumable fine-tunes), dev pass rate before/after."""
    names = [n for n in ctx.param("finetune.constraints", DEFAULT_CONSTRAINTS).split(",") if n]
    if len(set(names)) != len(names):
        raise ValueError(f"finetune.constraints names a constraint twice: {names}")
    cfg = FinetuneConfig(
        lr=ctx.param("finetune.lr", ctx.model.finetune_lr), epochs=ctx.param("finetune.epochs", 3.0),
        batch_size=ctx.param("finetune.batch_size", 8), replay=ctx.param("finetune.replay", 0.25),
        warmup=ctx.param("finetune.warmup", 10), seed=ctx.param("finetune.seed", 0),
        freeze_embeddings=ctx.param("finetune.freeze_embeddings", ctx.model.freeze_embeddings),
        checkpoint_every=ctx.param("finetune.checkpoint_every", 25))
    max_train = ctx.param("finetune.max_train", 0) or None  # 0: all; smaller for smoke tests
    dev_limit = ctx.param("finetune.max_dev", 0) or None
    max_new = ctx.param("finetune.max_new_tokens", 96)
    tracked = ctx.param("finetune.track", names[0])  # the specialist that keeps intermediate checkpoints
    records = {}
    for name in names:
        n_train = max_train or sum(1 for _ in open(probes_file(ctx, name, "train")))
        total = cfg.steps(n_train)
        keep_at = sorted({max(1, round(total / 3)), max(1, round(2 * total / 3))} - {total}) if name == tracked else []
        records[name] = train_one(ctx, name, cfg, keep_at, max_new, dev_limit, max_train)
        link_tree(ctx.work("finetune") / name / "model", out / name)
        for ck in records[name]["checkpoints"]:
            link_tree(ctx.work("finetune") / name / "checkpoints" / ck, out / "checkpoints" / ck)
    summary = {"specialists": names, "tracked": tracked, "seed": cfg.seed, "records": records}
    write_json(out / "finetune.json", summary)
    return {"specialists": names, "seed": cfg.seed, "tracked": tracked,
            "per_specialist": {n: {k: r[k] for k in ("steps", "seconds", "final_loss")}
                               | {"dev_before": r["dev_before"]["pass_rate"], "dev_after": r["dev_after"]["pass_rate"]}
                               for n, r in records.items()}}
