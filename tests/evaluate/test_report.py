"""The comparison report's verdicts on hand-made results whose answers can be worked out on paper."""

from types import SimpleNamespace

from mechmerge.evaluate.report import markdown, summarize

SUITE = SimpleNamespace(retention={}, quality={})


def cell(acc, n=100):
    return {"test": {t: {"accuracy": a, "n": n} for t, a in acc.items()}}


def results(mix_ab, mix_cd):
    """Two pairs; task arithmetic is the strongest baseline (0.50 mean), ties weaker (0.40)."""
    out = {}
    for combo, mix in (("a+b", mix_ab), ("c+d", mix_cd)):
        t1, t2 = combo.split("+")
        out[combo] = {"base": cell({t1: 0.0, t2: 0.0}), "linear": cell({t1: 0.1, t2: 0.1}),
                      "task_arithmetic": cell({t1: 0.5, t2: 0.5}), "ties": cell({t1: 0.4, t2: 0.4}),
                      "guided:mix": cell({t1: mix, t2: mix}),
                      "control:random": cell({t1: 0.45, t2: 0.45}), "control:magnitude": cell({t1: 0.6, t2: 0.6}),
                      f"expert:{t1}": cell({t1: 1.0}), f"expert:{t2}": cell({t2: 1.0})}
    return out


def report(mix_ab, mix_cd):
    s = summarize(results(mix_ab, mix_cd), SUITE, default="guided:mix")
    return s, markdown({"suite": "toy", "protocol": {"candidates": 3}, "summary": s})


def test_claim_against_the_strongest_baseline_with_both_conditions():
    s, md = report(0.60, 0.54)  # +10 and +4 points over task arithmetic
    c = s["claim"]
    assert c["best_baseline"] == "task_arithmetic"
    assert abs(c["margin"] - 0.07) < 1e-9 and abs(c["worst_combination"] - 0.04) < 1e-9 and c["holds"]
    assert "**HOLDS** — margin +7.0 points, worst combination +4.0 points" in md
    # a big mean margin does not save a combination more than 2 points worse
    s, md = report(0.70, 0.47)
    assert s["claim"]["margin"] > 0.03 and not s["claim"]["holds"] and "worst combination -3.0" in md


def test_margin_just_under_the_threshold_is_not_printed_as_the_threshold():
    s, md = report(0.5296, 0.5296)  # +2.96 points: one decimal would print +3.0 next to DOES NOT HOLD
    assert not s["claim"]["holds"] and "margin +2.96 points" in md


def test_controls_are_compared_on_their_means():
    s, md = report(0.55, 0.55)
    assert s["controls"]["control:random"]["beaten"] and not s["controls"]["control:magnitude"]["beaten"]
    assert "random 0.450, magnitude 0.600 vs mechanism 0.550" in md and "**does not beat its controls**" in md
    assert s["methods"]["experts"]["mean"] == 1.0


def test_retention_and_quality_columns_average_what_they_say():
    """Retention: accuracy on the base's general skills; quality: log-probability of its answers;
    for the experts row, each expert's own evaluation."""
    suite = SimpleNamespace(retention={"test": {"copy": "c.jsonl"}}, quality={"test": {"plain": "p.jsonl"}})
    res = results(0.6, 0.5)
    for combo, r in res.items():
        for m, c in r.items():
            c["test"]["copy"] = {"accuracy": 0.9 if m == "guided:mix" else 0.7, "n": 10}
            c["test"]["plain"] = {"accuracy": 0.0, "logprob": -1.0 if combo == "a+b" else -2.0, "n": 10}
    s = summarize(res, suite, default="guided:mix")
    rows = s["methods"]
    assert rows["guided:mix"]["retention"] == 0.9 and rows["task_arithmetic"]["retention"] == 0.7
    assert rows["guided:mix"]["quality"] == -1.5  # mean over the two combinations
    assert rows["experts"]["retention"] == 0.7 and rows["experts"]["quality"] == -1.5
    md = markdown({"suite": "toy", "protocol": {"candidates": 3}, "summary": s})
    assert "| retention | quality |" in md and "| 0.900 | -1.500 |" in md


def test_the_shipped_zoo_is_a_suite():
    from pathlib import Path

    from mechmerge.evaluate.compare import resolve_suite

    s = resolve_suite("alpha")
    assert sorted(s.experts) == ["add", "rev", "shift", "sort"]
    assert set(s.splits) == {"score", "dev", "test"} and all(set(m) == set(s.experts) for m in s.splits.values())
    assert set(s.retention) == {"dev", "test"} and set(s.retention["test"]) == {"copy", "twice"}
    s.check()  # every model and probe file is there
    assert all(Path(f).is_file() for m in s.splits.values() for f in m.values())


def test_suite_paths_resolve_against_the_file_and_home(tmp_path, monkeypatch):
    import json

    from mechmerge.evaluate.suite import Suite

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    d = tmp_path / "suites"
    d.mkdir()
    (d / "s.json").write_text(json.dumps({
        "base": "models/base", "experts": {"a": "~/cache/a", "b": str(tmp_path / "abs" / "b")},
        "splits": {"dev": {"a": "../probes/a.jsonl"}}}))
    s = Suite.from_file(str(d / "s.json"))
    assert s.base == str(d / "models" / "base")
    assert s.experts == {"a": str(home / "cache" / "a"), "b": str(tmp_path / "abs" / "b")}
    assert s.splits["dev"]["a"] == str(d / ".." / "probes" / "a.jsonl")


def test_the_plot_colours_controls_apart_from_the_baselines():
    """The figure's title names the colours; controls used to be drawn in the baselines' orange."""
    from mechmerge.evaluate.report import COLORS, family

    kinds = {m: family(m) for m in ("guided:mix", "guided:conflict", "control:random", "control:magnitude",
                                    "linear", "task_arithmetic", "ties", "dare_ties", "base", "experts")}
    assert kinds == {"guided:mix": "guided", "guided:conflict": "guided", "control:random": "control",
                     "control:magnitude": "control", "linear": "baseline", "task_arithmetic": "baseline",
                     "ties": "baseline", "dare_ties": "baseline", "base": "reference", "experts": "reference"}
    assert len(set(COLORS.values())) == len(COLORS)


def test_pairs_and_triples_get_their_own_means_and_claims():
    """mix wins both pairs by 10 points and loses the triple by 10: the overall mean (+3.3) would say
    'holds on the mean'; the table by size shows where it wins and where it loses."""
    res = results(0.60, 0.60)
    triple = {"base": cell({"a": 0.0, "b": 0.0, "c": 0.0}), "linear": cell({"a": 0.1, "b": 0.1, "c": 0.1}),
              "task_arithmetic": cell({"a": 0.5, "b": 0.5, "c": 0.5}), "ties": cell({"a": 0.2, "b": 0.2, "c": 0.2}),
              "guided:mix": cell({"a": 0.4, "b": 0.4, "c": 0.4}),
              "control:random": cell({"a": 0.3, "b": 0.3, "c": 0.3}),
              "control:magnitude": cell({"a": 0.3, "b": 0.3, "c": 0.3}),
              **{f"expert:{t}": cell({t: 1.0}) for t in "abc"}}
    res["a+b+c"] = triple
    s = summarize(res, SUITE, default="guided:mix")
    assert set(s["by_size"]) == {2, 3}
    pairs, triples = s["by_size"][2], s["by_size"][3]
    assert abs(pairs["claim"]["margin"] - 0.10) < 1e-9 and pairs["claim"]["holds"]
    assert abs(triples["claim"]["margin"] + 0.10) < 1e-9 and not triples["claim"]["holds"]
    assert abs(pairs["methods"]["guided:mix"]["mean"] - 0.6) < 1e-9
    assert abs(triples["methods"]["guided:mix"]["mean"] - 0.4) < 1e-9
    md = markdown({"suite": "toy", "protocol": {"candidates": 3}, "summary": s})
    assert "| method | pairs (2) | triples (1) |" in md
    assert "| guided:mix | 0.600 ± 0.000 | 0.400 ± 0.000 |" in md
    assert "- pairs: guided:mix vs task_arithmetic (the best baseline on pairs): margin +10.0 points" in md
    assert "- triples: guided:mix vs task_arithmetic (the best baseline on triples): margin -10.0 points" in md
    # one size only: no breakdown
    assert "by_size" not in summarize(results(0.6, 0.6), SUITE, default="guided:mix")


def test_paired_difference_over_the_same_instructions():
    """Per-instruction answers in the cache give a paired test of the default against the best
    baseline, over every task of every combination; one entry without them turns it off."""
    res = results(0.5, 0.5)
    # a+b: mix right on items 0-2 of each task, task arithmetic on items 2-3 (4 items per task)
    for combo in res:
        for t in combo.split("+"):
            res[combo]["guided:mix"]["test"][t]["correct"] = [1, 1, 1, 0]
            res[combo]["task_arithmetic"]["test"][t]["correct"] = [0, 0, 1, 1]
    s = summarize(res, SUITE, default="guided:mix")
    p = s["claim"]["paired"]
    # 16 items; differences +1 (items 0, 1) and -1 (item 3) per task: mean (2 - 1) / 4 = 0.25
    assert p["n"] == 16 and abs(p["diff"] - 0.25) < 1e-12 and p["a_only"] == 8 and p["b_only"] == 4
    import numpy as np
    d = np.array([1, 1, 0, -1] * 4, dtype=float)
    assert abs(p["stderr"] - d.std(ddof=1) / 4) < 1e-12
    md = markdown({"suite": "toy", "protocol": {"candidates": 3}, "summary": s})
    assert ("Paired over the same 16 test instructions: guided:mix − task_arithmetic = +0.250 ± 0.214 "
            "(guided:mix alone right on 8, task_arithmetic alone on 4).") in md
    del res["c+d"]["task_arithmetic"]["test"]["c"]["correct"]
    s = summarize(res, SUITE, default="guided:mix")
    assert s["claim"]["paired"] is None
    assert "No paired test" in markdown({"suite": "toy", "protocol": {"candidates": 3}, "summary": s})
