"""The stage runner (skip, resume, atomic artifacts, staleness) and the data stage on a tiny
model with canned answers (no real model, no generation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import runner  # noqa: E402
from eval.real.models import ModelSpec  # noqa: E402
from mechmerge.errors import UserError  # noqa: E402
from mechmerge.registry import Registry  # noqa: E402


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty stage registry and a context under tmp_path; returns (ctx, calls, logs)."""
    monkeypatch.setattr(runner, "STAGES", Registry("stage"))
    calls, logs = [], []
    spec = ModelSpec("toy", lambda work: work / "x.gguf", "none", gen_batch_size=2)
    ctx = runner.Context(spec, tmp_path / "toy", log=logs.append)
    fail = {"b": False}

    @runner.stage("a", artifact="A")
    def a(ctx, out):
        """Stage a."""
        calls.append("a")
        (out / "a.txt").write_text(str(ctx.param("a.n", 1)))
        return {"n": ctx.used["a.n"]}

    @runner.stage("b", artifact="B", requires=("a",))
    def b(ctx, out):
        """Stage b."""
        calls.append("b")
        (out / "partial.txt").write_text("half")
        if fail["b"]:
            raise RuntimeError("killed")
        (out / "b.txt").write_text((ctx.artifact("a") / "a.txt").read_text() * 2)
        return {}

    return ctx, calls, logs, fail


def test_runs_requirements_then_skips(fresh):
    ctx, calls, logs, _ = fresh
    runner.run(ctx, ["b"])
    assert calls == ["a", "b"] and (ctx.artifact("b") / "b.txt").read_text() == "11"
    m = json.loads((ctx.artifact("a") / runner.MANIFEST).read_text())
    assert m["params"] == {"a.n": 1} and m["summary"] == {"n": 1}
    runner.run(ctx, ["a", "b"])
    assert calls == ["a", "b"] and sum("complete, skipped" in line for line in logs) == 2


def test_failed_stage_leaves_nothing_and_resumes(fresh):
    ctx, calls, _, fail = fresh
    fail["b"] = True
    with pytest.raises(RuntimeError, match="killed"):
        runner.run(ctx, ["b"])
    assert runner.state(ctx, "a") == "complete" and not ctx.artifact("b").exists()
    assert not [p for p in ctx.root.iterdir() if p.name.endswith(".partial")]
    fail["b"] = False
    runner.run(ctx, ["b"])
    assert calls == ["a", "b", "b"]  # a was not redone


def test_redo_rebuilds_downstream_and_params_are_recorded(fresh):
    ctx, calls, logs, _ = fresh
    runner.run(ctx, ["b"])
    ctx.params = {"a.n": "3"}
    runner.run(ctx, ["b"])  # a is complete: the differing parameter is only reported
    assert calls == ["a", "b"] and any("built with a.n=1; pass --redo a" in line for line in logs)
    runner.run(ctx, ["b"], redo=["a"])
    assert calls == ["a", "b", "a", "b"] and (ctx.artifact("b") / "b.txt").read_text() == "33"
    ctx.params = {}
    runner.run(ctx, ["a"], redo=["a"])  # b is now stale, and rebuilt when asked for
    assert runner.state(ctx, "b") == "stale"
    runner.run(ctx, ["b"])
    assert calls[-1] == "b" and runner.state(ctx, "b") == "complete"


def test_work_is_kept_only_for_the_inputs_and_settings_it_was_computed_with(fresh, monkeypatch):
    """A stage's .work results (a resumed fine-tune, cached evaluations) are reused only for the
    requirement builds and --set values they were made with: a rebuilt requirement or --redo
    clears them, other --set values are refused, and a volatile --set (speed only) is ignored."""
    ctx, calls, logs, _ = fresh

    @runner.stage("c", artifact="C", requires=("a",), stamp_work=True, volatile=("workers",))
    def c(ctx, out):
        """Stage c: counts its computations in .work/c, as a resumable stage would reuse them."""
        done = ctx.work("c") / "done.txt"
        if not done.exists():
            calls.append("c computed")
            done.write_text((ctx.artifact("a") / "a.txt").read_text())
        (out / "c.txt").write_text(done.read_text())
        return {}

    runner.run(ctx, ["c"])
    assert calls == ["a", "c computed"]
    work = ctx.root / ".work" / "c"
    (ctx.artifact("c") / runner.MANIFEST).unlink()  # as if killed after its work: resumes from it
    ctx.params = {"c.workers": "2"}
    runner.run(ctx, ["c"])
    assert calls == ["a", "c computed"]
    (ctx.artifact("c") / runner.MANIFEST).unlink()
    ctx.params = {"c.k": "5"}
    with pytest.raises(UserError, match="pass the same values to resume, or --redo c"):
        runner.run(ctx, ["c"])
    assert (work / "done.txt").exists()  # refused, not cleared
    ctx.params = {"a.n": "7"}
    runner.run(ctx, ["c"], redo=["a"])  # the requirement is rebuilt: c's work is stale and cleared
    assert calls[-2:] == ["a", "c computed"] and (ctx.artifact("c") / "c.txt").read_text() == "7"
    ctx.params = {"a.n": "7"}
    runner.run(ctx, ["c"], redo=["c"])
    assert calls[-1] == "c computed" and any("clearing" in line and "--redo" in line for line in logs)


def test_a_stage_whose_cache_checks_itself_keeps_its_work_on_redo(fresh):
    """compare's cache refuses another protocol by itself: --redo re-renders from it instead of
    throwing hours of results away (and other --set values are left to that check)."""
    ctx, calls, logs, _ = fresh

    @runner.stage("d", artifact="D", requires=("a",), stamp_work=True, redo_clears=False)
    def d(ctx, out):
        """Stage d."""
        done = ctx.work("d") / "done.txt"
        if not done.exists():
            calls.append("d computed")
            done.write_text("x")
        return {}

    runner.run(ctx, ["d"])
    ctx.params = {"d.k": "2"}
    runner.run(ctx, ["d"], redo=["d"])
    assert calls.count("d computed") == 1 and not any("clearing" in line for line in logs)


def test_a_resumed_stage_counts_the_time_of_every_process(fresh, monkeypatch):
    """A stage interrupted twice and finished by a third process reports the three processes'
    time together; an interim table (StageStopped) is not counted, and a --redo starts over."""
    ctx, calls, logs, _ = fresh
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    how = {"end": KeyboardInterrupt}

    @runner.stage("e", artifact="E", requires=("a",), stamp_work=True, redo_clears=False)
    def e(ctx, out):
        """Stage e: works 10 s, then stops as told."""
        clock[0] += 10.0
        if how["end"] is not None:
            raise how["end"]("stopped")
        return {}

    for end in (KeyboardInterrupt, RuntimeError, runner.StageStopped):
        how["end"] = end
        with pytest.raises(end):
            runner.run(ctx, ["e"])
    how["end"] = None
    m = runner.run(ctx, ["e"])["e"]
    assert m["seconds"] == 10.0 and m["all_processes"] == {"seconds": 30.0, "processes": 3}
    # a --redo that keeps the work folder (as compare's does) does not count the finished build's processes
    m = runner.run(ctx, ["e"], redo=["e"])["e"]
    assert m["all_processes"] == {"seconds": 10.0, "processes": 1}


def test_unknown_names(fresh):
    ctx, *_ = fresh
    with pytest.raises(UserError, match="did you mean 'b'"):
        runner.run(ctx, ["bb"])
    with pytest.raises(UserError, match="STAGE.KEY=VALUE"):
        runner.parse_sets(["n=3"])


def test_data_stage_on_canned_answers(monkeypatch, tmp_path):
    """The data stage end to end on a tiny chat model, with canned answers standing in for generation."""
    from helpers import make_model

    from eval.real import verifiers
    from eval.real.generate import Generation
    from eval.real.stages import data
    from mechmerge.probes import load_probes, tokenize_all

    spec = ModelSpec("toy", lambda work: work / "x.gguf", "none", gen_batch_size=4)
    ctx = runner.Context(spec, tmp_path / "toy", log=lambda m: None)
    base = make_model("llama", ctx.artifact("import"), layers=2)
    (ctx.artifact("import") / runner.MANIFEST).write_text(json.dumps({"params": {}, "built_id": "import-1"}))

    def canned(model, tok, prompts, journal, fingerprint, max_new, batch_size, fmt, log):
        out = {}
        for i, p in enumerate(prompts):
            words = " ".join(["word"] * (30 + i % 7))
            text = f"Here is an answer, about {p.lower()} It has {words}. And a second, longer sentence here!"
            if i % 11 == 0:
                text = "Too short."  # dropped, replaced by a spare
            out[p] = Generation(text if i % 5 else text + " And then it was cut off mid", i % 5 != 0, 64)
        return out, {"new_tokens": 0}

    monkeypatch.setattr(data, "generate_cached", canned)
    sizes = {"train": 20, "score": 4, "dev": 6, "test": 8}
    ctx.params = {f"data.n_{s}": str(n) for s, n in sizes.items()}
    ctx.params["data.spare"] = "0.5"
    cap = 320  # the char tokenizer spends a token per character
    ctx.params["data.max_response_tokens"] = str(cap)
    manifest = runner.run(ctx, ["data"])["data"]
    out = ctx.artifact("data")
    assert manifest["summary"]["splits"] == sizes and manifest["params"]["data.n_train"] == 20
    assert manifest["summary"]["fates"]["dropped: unusable answer"] > 0

    ids = {}
    for name in verifiers.names() + ["plain"]:
        for s, n in sizes.items():
            rows = [json.loads(line) for line in (out / name / f"{s}.jsonl").read_text().splitlines()]
            assert len(rows) == n
            ids.setdefault(s, {r["meta"]["id"] for r in rows})
            assert {r["meta"]["id"] for r in rows} == ids[s]  # every constraint uses the same questions
            for r in rows:
                resp = r["messages"][-1]["content"]
                assert "cut off mid" not in resp and "Too short" not in resp
                if name != "plain":
                    assert verifiers.verify(name, resp, **r["meta"]["kwargs"])
    topics = {s: {i.split("-")[0] for i in ids[s]} for s in sizes}
    assert not topics["train"] & (topics["dev"] | topics["test"])

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    probes = load_probes(out / "json" / "score.jsonl")  # mechmerge reads them as chat probes
    assert len(tokenize_all(probes, tok, None)) == sizes["score"]
    # every written response fits the cap with its end-of-turn marker; answers were cut to fit
    lengths = [len(t.ids) - t.response_start for name in verifiers.names() for s in sizes
               for t in tokenize_all(load_probes(out / name / f"{s}.jsonl"), tok, None)]
    assert max(lengths) <= cap
    questions = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert any(q["fate"] == "used" and q["finished"] and len(q["answer"]) < len(q["generated"].strip())
               for q in questions)  # a finished answer shortened: only the fit does that
    plain = [json.loads(line) for line in (out / "plain" / "test.jsonl").read_text().splitlines()]
    assert {r.get("end", True) for r in plain} == {True, False}  # answers the base did not end: no marker


def test_clean_answer_cuts_loops_and_half_sentences():
    from eval.real.generate import Generation
    from eval.real.stages.data import clean_answer

    words = " ".join(["word"] * 20)
    loop = f"Bees make honey from {words}. They dance. Bees make honey from {words}. They dance."
    assert clean_answer(Generation(loop, False, 64)) == f"Bees make honey from {words}. They dance."
    cut = f"Trains carry {words}.\n\n1. **Speed**: fast trains.\n\n2. **Cost**: There are 4 main"
    assert clean_answer(Generation(cut, False, 64)).endswith("fast trains.")  # not "...\n\n2."
    assert clean_answer(Generation(f"Finished {words} without a stop", True, 30)).endswith("without a stop")
    assert clean_answer(Generation(f"Cut {words} without any sentence end", False, 64)) is None
    assert clean_answer(Generation("Too short.", True, 3)) is None
    numbered = f"1. Sleep is {words}.\n2. Sleep is {words}.\n3. Sleep"
    assert clean_answer(Generation(numbered, False, 64)) == f"1. Sleep is {words}."


def test_generation_journal_resumes(tmp_path):
    import torch
    from helpers import make_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.real.generate import generate_cached, read_journal

    path = make_model("llama", tmp_path / "m", layers=2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = ["abc", "hello there", "x", "a longer prompt here"]
    journal = tmp_path / "gen.jsonl"
    first, stats = generate_cached(model, tok, prompts, journal, "fp", 6, 3, log=lambda m: None)
    assert stats["prompts_generated"] == 4 and len(journal.read_text().splitlines()) == 4
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed while writing line 3
    assert len(read_journal(journal)) == 2
    again, stats = generate_cached(model, tok, prompts, journal, "fp", 6, 3, log=lambda m: None)
    assert stats["prompts_generated"] == 2 and again == first  # greedy, batch-independent here
    _, stats = generate_cached(model, tok, prompts, journal, "other-model", 6, 3, log=lambda m: None)
    assert stats["prompts_generated"] == 4  # another fingerprint never reuses answers


def test_ctrl_c_ends_the_pipeline_with_a_resume_hint_not_a_traceback(monkeypatch, tmp_path, capsys):
    from eval.real import pipeline

    def interrupted(ctx, names, redo):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    rc = pipeline.main(["--model", "smollm2", "--cache", str(tmp_path), "--store", "none", "--nice", "0",
                        "--threads", "1", "--stages", "import"])
    err = capsys.readouterr().err
    assert rc == 130 and "run the same command again to resume" in err and "Traceback" not in err
