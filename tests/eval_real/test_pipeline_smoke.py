"""Every stage after `data` on a random SmolLM2-shaped model (2 layers, tiny hidden, the char
tokenizer), with canned answers standing in for the base's generations: the real code
paths of finetune, eval_experts, score, heatmaps, recipe, merge, eval, compare (1 pair,
1 candidate) and report. No real model, no download.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import runner  # noqa: E402
from eval.real.models import ModelSpec  # noqa: E402

# SmolLM2-135M-Instruct's config (llama, GQA 3:1, tied embeddings), shrunk.
SMOLLM2 = dict(hidden_act="silu", rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
               attention_bias=False, mlp_bias=False, max_position_embeddings=1024)
SHRUNK = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
              num_key_value_heads=2, head_dim=8)
PAIR = ["json", "bullets"]
SETS = {"data.n_train": 12, "data.n_score": 4, "data.n_dev": 4, "data.n_test": 4, "data.spare": 0.5,
        "data.max_response_tokens": 400,  # the char tokenizer spends a token per character
        "finetune.constraints": ",".join(PAIR), "finetune.epochs": 2, "finetune.max_new_tokens": 8,
        "finetune.checkpoint_every": 2, "eval_experts.max_new_tokens": 8, "score.exact_probes": 2,
        "score.progress": False, "compare.sizes": 2, "compare.candidates": 1, "compare.max_dev_probes": 2,
        "compare.max_test_probes": 2, "compare.max_new_tokens": 8, "compare.progress": False,
        "recipe.progress": False, "eval.max_new_tokens": 8, "eval.progress": False}


def tiny_smollm2(path: Path) -> Path:
    import transformers as tf

    from mechmerge.zoo.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_char_tokenizer, vocab_size

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=vocab_size(), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                         **SMOLLM2, **SHRUNK)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(ctx, logs, manifests) after running every stage once."""
    importlib.import_module("eval.real.stages")  # registers the stages
    from eval.real.generate import Generation
    from eval.real.stages import data

    tmp = tmp_path_factory.mktemp("real")
    logs = []
    spec = ModelSpec("tiny-smollm2", lambda work: work / "x.gguf", "none", gen_batch_size=8)
    ctx = runner.Context(spec, tmp / "tiny-smollm2", log=logs.append, store=tmp / "store")
    tiny_smollm2(ctx.artifact("import"))
    (ctx.artifact("import") / runner.MANIFEST).write_text(json.dumps({"params": {}, "built_id": "import-1"}))

    def canned(model, tok, prompts, journal, fingerprint, max_new, batch_size, fmt, log):
        return {p: Generation(f"Sure. This is about {p.lower()} It is a fine topic. People like it a lot.", True, 30)
                for p in prompts}, {"new_tokens": 0}

    mp = pytest.MonkeyPatch()
    mp.setattr(data, "generate_cached", canned)
    mp.setattr(data, "MIN_WORDS", 5)
    ctx.params = {k: str(v) for k, v in SETS.items()}
    ctx.params.update({f"{st}.publish": str(tmp / "published") for st in ("compare", "report", "recipe", "eval")})
    torch.set_num_threads(1)
    try:
        manifests = runner.run(ctx, runner.STAGES.names())
    finally:
        mp.undo()
    return ctx, logs, manifests


def test_specialists_are_plain_model_dirs(pipeline):
    from mechmerge.models.checkpoint import Checkpoint, check_compatible

    ctx, _, m = pipeline
    ft = json.loads((ctx.artifact("finetune") / "finetune.json").read_text())
    assert ft["specialists"] == PAIR and ft["seed"] == 0
    base = Checkpoint.open(str(ctx.artifact("import")))
    for name in PAIR:
        d = ctx.artifact("finetune") / name
        assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
        ck = Checkpoint.open(str(d))
        check_compatible(base, ck)
        assert not torch.equal(ck.get("model.layers.0.mlp.down_proj.weight"),
                               base.get("model.layers.0.mlp.down_proj.weight"))
        r = ft["records"][name]
        assert r["steps"] == 4 and r["seconds"] > 0 and r["final_loss"] > 0
        assert 0 <= r["dev_before"]["pass_rate"] <= 1 and r["dev_after"]["n"] == 4
    assert [p.name for p in sorted((ctx.artifact("finetune") / "checkpoints").iterdir())] == \
        ["json-step1", "json-step1.lora.safetensors", "json-step3", "json-step3.lora.safetensors"]
    for name in PAIR:  # LoRA specialists: only the adapted linear layers of the blocks differ from the base
        ck = Checkpoint.open(str(ctx.artifact("finetune") / name))
        same = {t for t in ck.tensors if torch.equal(ck.get(t), base.get(t))}
        assert {t for t in ck.tensors if t not in same} == {t for t in ck.tensors if t.endswith("proj.weight")}
    assert not list(ctx.work("finetune").rglob("state.pt"))  # removed once a specialist is saved


def test_every_stage_ran_and_a_rerun_skips(pipeline):
    ctx, logs, m = pipeline
    assert set(m) == set(runner.STAGES.names())
    ev = json.loads((ctx.artifact("eval_experts") / "results.json").read_text())
    assert set(ev["results"]) == {"base", *PAIR} and ev["constraints"] == PAIR
    assert all(0 <= ev["results"][x][c]["accuracy"] <= 1 for x in ev["results"] for c in PAIR)
    agree = json.loads((ctx.artifact("score") / "agreement.json").read_text())
    assert -1 <= agree["hybrid_vs_exact"]["spearman"] <= 1 and agree["exact_probes"] == 2
    scores = json.loads((ctx.artifact("score") / "scores.json").read_text())
    assert scores["method"] == "hybrid" and set(scores["experts"]) == set(PAIR)
    assert len(list((ctx.artifact("heatmaps") / "hybrid").glob("*.png"))) == 2
    res = json.loads((ctx.artifact("compare") / "results.json").read_text())
    assert list(res["combinations"]) == ["json+bullets"] and "guided:mix" in res["summary"]["methods"]
    counted = runner.manifest_of(ctx.artifact("compare"))["summary"]["cache_entries"]
    assert counted["computed_this_run"] == counted["total"] > 0  # the first run computed every result
    readme = (Path(ctx.params["report.publish"]) / "README.md").read_text()
    for section in ("Stage runtimes", "Fine-tuned specialists", "Weight Patching", "Heatmaps", "guided:mix", "Guided − uniform, paired"):
        assert section in readme
    logs.clear()
    runner.run(ctx, runner.STAGES.names())
    assert sum("complete, skipped" in line for line in logs) == len(runner.STAGES.names())


def test_compare_partial_publishes_the_interim_table(pipeline):
    from mechmerge.errors import UserError

    ctx, _, _ = pipeline
    pub = Path(ctx.params["compare.publish"])
    ctx.params["compare.partial"] = "true"
    try:
        with pytest.raises(UserError, match="1 of 1 combinations complete"):
            runner.run(ctx, ["compare"], redo=["compare"])
    finally:
        del ctx.params["compare.partial"]
    md = (pub / "results-partial.md").read_text()
    assert md.startswith("**Partial: 1 of 1 combinations complete**") and "guided:mix" in md
    assert (pub / "results-partial.png").is_file()
    assert runner.state(ctx, "compare") == "complete"  # a finished stage is left as it was


def test_recipe_merge_eval_stages_on_the_specialists(pipeline):
    """The specialists and their scores go through the recipe -> merge -> eval stages: YAML that
    mergekit's own parser reads, merged model dirs with cards, one table with every model."""
    import numpy as np
    import yaml
    from mergekit.config import MergeConfiguration

    ctx, _, m = pipeline
    recipes = ctx.artifact("recipe")
    for label, strategy in (("guided", "mix"), ("uniform", "uniform")):
        assert m["recipe"]["summary"]["recipes"][label]["strategy"] == strategy
        cfg = yaml.safe_load((recipes / f"{label}.yaml").read_text())
        MergeConfiguration.model_validate(cfg)
        assert {Path(x["model"]).name for x in cfg["models"]} >= set(PAIR)
        merged = ctx.artifact("merge") / label
        assert (merged / "README.md").is_file() and (merged / "mechmerge_scores.json").is_file()
    assert m["merge"]["summary"]["weights_digest"]["guided"] != m["merge"]["summary"]["weights_digest"]["uniform"]
    res = json.loads((ctx.artifact("eval") / "results.json").read_text())
    rows = res["results"]
    assert {"base", *PAIR, "guided merge", "uniform merge"} <= set(rows)
    n = sum(rows["guided merge"][c]["n"] for c in PAIR)
    expect = sum((rows["guided merge"][c]["accuracy"] - rows["uniform merge"][c]["accuracy"]) * rows["guided merge"][c]["n"]
                 for c in PAIR) / n
    assert res["guided_minus_uniform"]["n"] == n and np.isclose(res["guided_minus_uniform"]["diff"], expect)
    pub = Path(ctx.params["eval.publish"])
    assert "guided merge" in (pub / "merge-eval.md").read_text()
    assert (pub / "recipe-guided.yaml").is_file()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_training_resumes_exactly(tmp_path, lora_rank):
    """A fine-tune (full, or LoRA with bfloat16 autocast) killed after a checkpoint and resumed
    ends with the same weights."""
    from transformers import AutoModelForCausalLM

    from eval.real.train import FinetuneConfig, train
    from mechmerge.probes import Probe
    from mechmerge.zoo.tokenizer import build_char_tokenizer

    base = tiny_smollm2(tmp_path / "base")
    tok = build_char_tokenizer()
    task = [Probe(messages=(("user", f"say {w}"), ("assistant", w.upper())), response=w.upper(), line=i)
            for i, w in enumerate(["ab", "cd", "ef", "gh", "ij", "kl"])]
    replay = [Probe(messages=(("user", f"say {w}"), ("assistant", w)), response=w, line=i)
              for i, w in enumerate(["mn", "op", "qr"])]
    cfg = FinetuneConfig(lr=1e-3, epochs=3, batch_size=4, replay=0.25, warmup=2, checkpoint_every=2,
                         lora_rank=lora_rank, autocast_bf16=bool(lora_rank))
    torch.set_num_threads(1)

    def run(work: Path, stop_at=None):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

        def hook(step, loss):
            if step == stop_at:
                raise KeyboardInterrupt

        try:
            train(model, tok, task, replay, cfg, work, on_step=hook, log=lambda m: None)
        except KeyboardInterrupt:
            return None
        return model

    whole = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_at=5) is None and (tmp_path / "b" / "state.pt").is_file()
    resumed = run(tmp_path / "b")
    for (n, p), (_, q) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n
    if lora_rank:  # and it trained: the adapters moved off their zero start
        assert any(n.endswith("lora_B") and p.abs().sum() > 0 for n, p in resumed.named_parameters())


def test_loss_on_response_positions_matches_full_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    from eval.real.train import IGNORE, loss_on

    model = AutoModelForCausalLM.from_pretrained(tiny_smollm2(tmp_path / "m"), dtype=torch.float32)
    ids = torch.randint(5, 90, (3, 20), generator=torch.Generator().manual_seed(0))
    tgt = torch.full_like(ids, IGNORE)
    tgt[:, 8:19] = ids[:, 9:]
    full = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), tgt.flatten(),
                                             ignore_index=IGNORE)
    assert torch.allclose(loss_on(model, ids, tgt), full, atol=1e-5)


def test_metrics_read_the_constraint_from_the_probe():
    from eval.real.metrics import bullets, end_phrase, json as json_metric, kwargs_of
    from mechmerge.errors import UserError
    from mechmerge.probes import Probe

    def probe(prompt, response):
        return Probe(messages=(("user", prompt), ("assistant", response)), response=response)

    b = probe("Tell me. Answer in exactly 2 bullet points, each on its own line starting with '* '.", "* a\n* b")
    assert kwargs_of("bullets", b) == {"n": 2} and bullets("* x\n* y", b) and not bullets("* x", b)
    e = probe('Tell me. End your answer with the exact phrase "Hope this helps!"', "Yes. Hope this helps!")
    assert end_phrase("Fine. hope this helps!", e) and not end_phrase("Hope this helps! Bye.", e)
    j = probe('Tell me. Return your whole answer as a JSON object of the form {"answer": "..."}.', '{"answer": "x"}')
    assert json_metric('```json\n{"answer": "y"}\n```', j) and not json_metric('{"answer": ""}', j)
    with pytest.raises(UserError, match="reference answer fails"):
        kwargs_of("bullets", probe("Answer in exactly 3 bullet points.", "* a\n* b"))


def test_a_fresh_cache_restores_every_stored_stage(pipeline):
    """The machine is lost: only the committed store (and the base, re-imported) remain. Every
    stored stage is restored with its built_id, the specialists rebuilt bit for bit from their
    adapters; only heatmaps, recipe, merge, eval and report (not stored) run again. Then the comparison,
    rebuilt without its artifact, continues from the store's mirror of its per-candidate cache
    and computes nothing."""
    import shutil

    from mechmerge.models.digest import weights_digest

    ctx, logs, _ = pipeline
    stored = ["data", "finetune", "eval_experts", "score", "compare"]
    before = {n: runner.manifest_of(ctx.artifact(n))["built_id"] for n in stored}
    digests = {n: weights_digest(ctx.artifact("finetune") / n) for n in PAIR}
    assert (ctx.store / "compare.work" / "cache.json").is_file()
    for p in ctx.root.iterdir():
        if p != ctx.artifact("import"):
            shutil.rmtree(p)
    logs.clear()
    runner.run(ctx, runner.STAGES.names())
    assert {n: runner.manifest_of(ctx.artifact(n))["built_id"] for n in stored} == before
    assert all(any(line.startswith(f"[{n}] restored in") for line in logs) for n in stored)
    # not stored (seconds here, minutes on the real models): they run again
    assert all(any(line.startswith(f"[{n}] done") for line in logs) for n in ("heatmaps", "recipe", "merge", "eval"))
    assert any("[report] done" in x for x in logs)
    assert {n: weights_digest(ctx.artifact("finetune") / n) for n in PAIR} == digests
    assert sum("rebuilt from its adapters, weights digest matches" in line for line in logs) == 4  # 2 + 2 checkpoints

    results = (ctx.artifact("compare") / "results.json").read_text()
    shutil.rmtree(ctx.artifact("compare"))
    shutil.rmtree(ctx.store / "compare")
    logs.clear()
    runner.run(ctx, ["compare"])
    assert any("continuing from the store's cache" in line for line in logs)
    assert (ctx.artifact("compare") / "results.json").read_text() == results
    counted = runner.manifest_of(ctx.artifact("compare"))["summary"]["cache_entries"]
    assert counted["computed_this_run"] == 0 and counted["total"] > 0  # what the report's runtime row says
    assert (ctx.store / "compare" / "results.json").is_file()
