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
data order from the seed), by default as LoRA rank 8 on every linear layer of the blocks
with bfloat16 autocast (`lora.py`; `--set finetune.lora_rank=0` for a full fine-tune). A
LoRA specialist is the base plus its saved float16 adapters, merged one way
(`build_specialist`), so the committed store (`store.py`) rebuilds it bit for bit on
another machine; its weights digest is recorded and checked. Work happens in
`.work/finetune/<name>/`: the optimizer state is checkpointed every few steps, a finished
specialist is kept there, so a killed stage resumes inside the specialist it was training
and never retrains a finished one. The artifact hard-links the finished model dirs.

Artifact:
    <name>/                         plain HF model dir (safetensors, tokenizer, chat template)
    <name>.lora.safetensors         its adapters (LoRA)
    checkpoints/<name>-step<k>/     two intermediate checkpoints of one specialist (and adapters)
    finetune.json                   per specialist: steps, seconds, losses, dev pass rates, digests
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from mechmerge.io import atomic_dir
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.digest import weights_digest
from mechmerge.models.load import load_model, load_tokenizer
from mechmerge.probes import load_probes

from .. import metrics
from .. import store as stored
from ..artifacts import eval_dtype_of, link_tree, link_tree_file, probes_file, save_model, write_json
from ..lora import apply_adapters, save_adapters
from ..runner import Context, stage
from ..train import FinetuneConfig, train

DEFAULT_CONSTRAINTS = "uppercase,json,end_phrase,bullets"


def dev_pass_rate(model, family, tok, dev: Path, name: str, max_new: int, limit: int | None,
                  dtype: torch.dtype) -> Dict[str, Any]:
    """Greedy pass rate of the verifier on the dev split (mechmerge's evaluator), on a copy of
    `model` in `dtype` (the model itself when it is in that dtype already)."""
    from mechmerge.evaluate.run import Evaluator

    ev = Evaluator({name: str(dev)}, tok, {name: metrics.name_of(name)}, batch_size=48, max_new_tokens=max_new,
                   max_probes=limit)
    t0 = time.perf_counter()
    m = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
    r = ev.run(m, family)[name]
    return {"pass_rate": r["accuracy"], "n": r["n"], "logprob": r["logprob"], "seconds": time.perf_counter() - t0}


def train_one(ctx: Context, name: str, cfg: FinetuneConfig, keep_at: List[int], max_new: int,
              dev_limit: int | None, max_train: int | None, eval_dtype: torch.dtype) -> Dict[str, Any]:
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
        before = dev_pass_rate(model, ck.family, tok, dev, name, max_new, dev_limit, eval_dtype)
        write_json(before_file, before)
    ctx.log(f"  {name}: base passes {before['pass_rate']:.3f} of {before['n']} dev probes")
    task = load_probes(probes_file(ctx, name, "train"), limit=max_train)
    replay = load_probes(probes_file(ctx, "plain", "train"))

    def keep(step: int, loss: float) -> None:
        if step in keep_at:
            target = wd / "checkpoints" / f"{name}-step{step}"
            if not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                if cfg.lora_rank:
                    save_adapters(model, cfg.lora_rank, cfg.lora_alpha, adapter_file(target))
                    build_specialist(base_dir, adapter_file(target), target)
                else:
                    with atomic_dir(target) as tmp:
                        save_model(model, base_dir, tmp)
                ctx.log(f"  {name}: kept checkpoint {target.name}")

    run = train(model, tok, task, replay, cfg, wd, on_step=keep if keep_at else None,
                log=lambda m: ctx.log(f"  {name}: {m}"), sources=(str(probes_file(ctx, name, "train")), "plain/train"))
    out = wd / "model"
    if out.exists():
        shutil.rmtree(out)
    if cfg.lora_rank:  # the specialist is what the saved (float16) adapters make, nothing else
        save_adapters(model, cfg.lora_rank, cfg.lora_alpha, adapter_file(out))
        del model
        build_specialist(base_dir, adapter_file(out), out)
        model = load_model(Checkpoint.open(str(out)), torch.device("cpu"), torch.float32)
    else:
        with atomic_dir(out) as tmp:
            save_model(model, base_dir, tmp)
    after = dev_pass_rate(model, ck.family, tok, dev, name, max_new, dev_limit, eval_dtype)
    ctx.log(f"  {name}: {run['steps']} steps in {run['seconds']:.0f}s, final loss {run['final_loss']:.4f}; "
            f"dev pass rate {before['pass_rate']:.3f} -> {after['pass_rate']:.3f}")
    record = {"name": name, "steps": run["steps"], "seconds": run["seconds"], "first_loss": run["first_loss"],
              "final_loss": run["final_loss"], "resumed_at": run["resumed_at"], "n_train": len(task),
              "n_replay_pool": len(replay), "dev_before": before, "dev_after": after, "config": run["config"],
              "checkpoints": [f"{name}-step{k}" for k in keep_at], "weights_digest": weights_digest(out),
              "checkpoint_digests": {f"{name}-step{k}": weights_digest(wd / "checkpoints" / f"{name}-step{k}")
                                     for k in keep_at}}
    write_json(wd / "log.json", run["log"])
    write_json(record_file, record)
    (wd / "state.pt").unlink(missing_ok=True)  # 3x the model's size; the finished model replaces it
    return record


def adapter_file(model_dir: Path) -> Path:
    """Where a LoRA specialist's adapters live: beside its model dir, `<dir>.lora.safetensors`."""
    return model_dir.with_name(model_dir.name + ".lora.safetensors")


def build_specialist(base_dir: Path, adapters: Path, out: Path) -> None:
    """The model dir of base + adapters (`lora.apply_adapters`): training, intermediate
    checkpoints and a restore from the committed store all make specialists this one way."""
    model = load_model(Checkpoint.open(str(base_dir), label="base"), torch.device("cpu"), torch.float32)
    apply_adapters(model, adapters)
    if out.exists():
        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        save_model(model, base_dir, tmp)


def rebuild(ctx: Context, out: Path) -> None:
    """Restore from the store: every specialist (and kept checkpoint) from its adapter file,
    checked against the weights digest recorded when it was trained."""
    summary = json.loads((out / "finetune.json").read_text())
    base_dir = ctx.artifact("import")
    for name, rec in summary["records"].items():
        for model_dir, digest in [(out / name, rec.get("weights_digest"))] + [
                (out / "checkpoints" / ck, rec.get("checkpoint_digests", {}).get(ck)) for ck in rec["checkpoints"]]:
            if not adapter_file(model_dir).is_file() or digest is None:
                raise stored.NotRestorable(f"{model_dir.name}: the store holds no adapters and digest for it "
                                           "(a full fine-tune cannot be restored)")
            build_specialist(base_dir, adapter_file(model_dir), model_dir)
            stored.check_digest(f"specialist {model_dir.name}", digest, weights_digest(model_dir))
            ctx.log(f"  {model_dir.name}: rebuilt from its adapters, weights digest matches")


@stage("finetune", artifact="experts", requires=("data",), stamp_work=True, volatile=("constraints",),
       store=("finetune.json", "*.lora.safetensors", "checkpoints/*.lora.safetensors"), restore=rebuild)
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
        checkpoint_every=ctx.param("finetune.checkpoint_every", 25),
        lora_rank=ctx.param("finetune.lora_rank", ctx.model.lora_rank),
        lora_alpha=ctx.param("finetune.lora_alpha", 16.0),
        autocast_bf16=ctx.param("finetune.autocast_bf16", True))
    max_train = ctx.param("finetune.max_train", 0) or None  # 0: all; smaller for smoke tests
    dev_limit = ctx.param("finetune.max_dev", 0) or None
    max_new = ctx.param("finetune.max_new_tokens", 96)
    eval_dtype = eval_dtype_of(ctx, "finetune")
    tracked = ctx.param("finetune.track", names[0])  # the specialist that keeps intermediate checkpoints
    records = {}
    for name in names:
        n_train = max_train or sum(1 for _ in open(probes_file(ctx, name, "train")))
        total = cfg.steps(n_train)
        keep_at = sorted({max(1, round(total / 3)), max(1, round(2 * total / 3))} - {total}) if name == tracked else []
        records[name] = train_one(ctx, name, cfg, keep_at, max_new, dev_limit, max_train, eval_dtype)
        link_tree(ctx.work("finetune") / name / "model", out / name)
        if cfg.lora_rank:
            link_tree_file(adapter_file(ctx.work("finetune") / name / "model"), adapter_file(out / name))
        for ck in records[name]["checkpoints"]:
            link_tree(ctx.work("finetune") / name / "checkpoints" / ck, out / "checkpoints" / ck)
            if cfg.lora_rank:
                link_tree_file(adapter_file(ctx.work("finetune") / name / "checkpoints" / ck),
                               adapter_file(out / "checkpoints" / ck))
    summary = {"specialists": names, "tracked": tracked, "seed": cfg.seed, "records": records}
    write_json(out / "finetune.json", summary)
    return {"specialists": names, "seed": cfg.seed, "tracked": tracked,
            "per_specialist": {n: {k: r[k] for k in ("steps", "seconds", "final_loss")}
                               | {"dev_before": r["dev_before"]["pass_rate"], "dev_after": r["dev_after"]["pass_rate"]}
                               for n, r in records.items()}}
