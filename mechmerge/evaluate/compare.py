"""The comparison harness: does mechanism-guided merging beat tuned uniform merging?

Protocol (fixed, the same for every method):
  * every 2- and 3-expert combination of the suite's experts;
  * each merge method proposes at most `candidates` merges per combination (baselines
    from a fixed hyperparameter grid; guided strategies the best of their
    calibration on the *scoring* probes); the untuned linear average proposes one;
  * the candidate with the best mean dev accuracy over the combination's tasks is
    chosen (the first on ties), then evaluated once on the test split;
  * every merge is computed by mergekit's engine from the recipe mechmerge writes;
    seeds are fixed; results are cached per candidate, so a killed run resumes.

The cache and the protocol it records are in cache.py.
"""

from __future__ import annotations

import itertools
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write_text, check_inputs, dumps
from ..merge import engine as mk
from ..models.checkpoint import Checkpoint
from ..models.load import load_model, load_tokenizer, overwrite_params, params_by_name, resolve_device, resolve_dtype
from ..options import Options, opt
from ..patching.score import ScoreOptions
from ..recipe import strategies
from ..recipe.build import RecipeOptions, make_recipe
from ..recipe.defaults import DEFAULT
from .cache import load_cache, protocol_of, save_cache
from .run import Evaluator
from .suite import Suite
from .workers import run_workers, shard_of


@dataclass
class CompareOptions(Options):
    suite: str = field(metadata=opt("Zoo name (alpha, beta), a zoo directory, or a suite JSON.", argument=True,
                                    metavar="SUITE"))
    out: str = field(default="results", metadata=opt("Results folder (table, JSON, plot, cache)."))
    sizes: str = field(default="2,3", metadata=opt("Combination sizes, comma separated."))
    candidates: int = field(default=6, metadata=opt("Merges each method may propose per combination.", min=1))
    strategies_: Tuple[str, ...] = field(default=(), metadata=opt(
        "Guided strategies to run (repeatable; default: every registered one but uniform).", flag="strategy"))
    score_method: str = field(default="exact", metadata=opt("Scoring method for the guided strategies."))
    seed: int = field(default=0, metadata=opt("Seed for random methods (DARE)."))
    batch_size: int = field(default=64, metadata=opt("Evaluation batch size.", min=1))
    max_dev_probes: Optional[int] = field(default=None, metadata=opt("Use only the first N dev probes per task.", min=1))
    max_test_probes: Optional[int] = field(default=None, metadata=opt(
        "Use only the first N test probes per task.", min=1))
    device: str = field(default="auto", metadata=opt("auto, cpu or cuda."))
    dtype: str = field(default="auto", metadata=opt(
        "Dtype merges are evaluated in: auto (float32), float32, bfloat16 or float16 (merging and "
        "calibration stay float32; bfloat16 generates ~2x faster on CPUs with AVX512-BF16)."))
    progress: bool = field(default=True, metadata=opt("Progress output."))
    workers: int = field(default=1, metadata=opt(
        "Processes that share the combinations (and the cores: torch threads are split among them); "
        "the results are written once all are done."))
    shard: str = field(default="", metadata=opt(
        "I/N: compute only every N-th combination starting at the I-th, into OUT's shared cache, and write "
        "no results (run several over one folder, then once without --shard to write them)."))
    partial: bool = field(default=False, metadata=opt(
        "Compute nothing: write results-partial.{md,json,png} over the combinations the cache holds in full "
        "(the interim table of a long or running comparison; same options as the run)."))

    def validate(self) -> None:
        """Everything that can be checked before any work (scoring comes first and takes long)."""
        parse_sizes(self.sizes)
        resolve_dtype(self.dtype, torch.device("cpu"))
        for name in self.strategies_:
            strategies.get(name)
        methods = typing.get_args(typing.get_type_hints(ScoreOptions)["method"])  # the scorer's own choices
        if self.score_method not in methods:
            from ..errors import unknown

            raise unknown("score method", self.score_method, methods)
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: expected 1 or more")
        if self.shard:
            shard_of(self.shard)
        if self.shard and self.workers > 1:
            raise UserError("--shard and --workers together: --workers starts its own shards")
        if self.partial and (self.shard or self.workers > 1):
            raise UserError("--partial computes nothing: drop --shard/--workers")


class NotCached(Exception):
    """A --partial run reached work its cache does not hold."""


# Baseline grids: `candidates` entries are taken in order (the grids are ordered so the
# first entries span the range).
TA_GRID = [0.5, 1.0, 0.75, 0.3, 1.25, 0.6, 0.9, 1.5]
SPARSE_GRID = [(0.5, 1.0), (0.3, 1.0), (0.7, 1.0), (0.5, 1.3), (0.3, 1.5), (0.7, 0.8), (0.9, 1.0), (0.2, 2.0)]


@dataclass
class Candidate:
    label: str
    recipe: Callable[[], Dict[str, Any]]  # built lazily: a cached result needs no recipe


@dataclass
class Harness:
    opts: CompareOptions
    suite: Suite
    scores: Dict[str, Any]
    out: Path
    dev: Evaluator
    test: Evaluator
    base: Checkpoint
    device: torch.device
    cache: Dict[str, Any] = field(default_factory=dict)
    model: Optional[torch.nn.Module] = None  # loaded by the first entry the cache lacks (_model)

    # -- candidates ---------------------------------------------------------------
    def _recipe(self, combo, **kw) -> Dict[str, Any]:
        ro = RecipeOptions(scores=str(self.out / "scores.json"), out="", experts=tuple(combo), progress=False,
                           seed=self.opts.seed, **kw)
        return make_recipe(ro, data=self.scores, write=False).config

    def methods(self, combo: Tuple[str, ...]) -> Dict[str, List[Candidate]]:
        n, N = len(combo), self.opts.candidates
        out: Dict[str, List[Candidate]] = {
            "linear": [Candidate("avg", lambda: self._recipe(combo, strategy="uniform", param={"scale": str(1 / n)},
                                                              method="linear", calibrate=False))]}
        out["task_arithmetic"] = [
            Candidate(f"lambda={lam}", lambda lam=lam: self._recipe(combo, strategy="uniform", param={"scale": str(lam)},
                                                                   calibrate=False)) for lam in TA_GRID[:N]]
        for method in ("ties", "dare_ties"):
            out[method] = [Candidate(f"density={d},lambda={lam}", lambda d=d, lam=lam, m=method: self._recipe(
                combo, strategy="uniform", param={"scale": "1.0"}, method=m, calibrate=False,
                method_param={"density": str(d), "lambda": str(lam)})) for d, lam in SPARSE_GRID[:N]]
        for name in self.guided():
            out[f"guided:{name}"] = self._guided(combo, name)
        # controls: the default strategy driven by random or by task-vector-magnitude scores instead
        for control in ("random", "magnitude"):
            out[f"control:{control}"] = self._guided(combo, DEFAULT.strategy, score=control)
        return out

    def guided(self) -> List[str]:
        return guided_strategies(self.opts)

    def _guided(self, combo, name: str, score: Optional[str] = None) -> List[Candidate]:
        """The strategy's top-N calibrations on the scoring probes (N = candidates)."""
        def calibrate(score=score) -> Dict[str, Any]:
            score = score or DEFAULT.score_for(name)
            ro = RecipeOptions(scores=str(self.out / "scores.json"), out="", experts=tuple(combo), strategy=name,
                               score=score, calibrate=True, progress=False, seed=self.opts.seed,
                               device=self.opts.device,
                               param={k: str(v) for k, v in DEFAULT.params_for(name).items()})
            r = make_recipe(ro, data=self.scores, write=False)
            table = sorted(r.calibration or [{"params": r.params, "rank_key": (0.0,)}], key=lambda t: t["rank_key"],
                           reverse=True)
            return {"score": score, "params": [t["params"] for t in table[: self.opts.candidates]]}

        c = self._cached(f"calib|{'+'.join(combo)}|{name}|{score or 'default'}", calibrate)
        return [Candidate(self._label(name, p), lambda p=p: self._recipe(
            combo, strategy=name, score=c["score"], param={k: str(v) for k, v in p.items()}, calibrate=False))
            for p in c["params"]]

    @staticmethod
    def _label(name: str, params: Dict[str, Any]) -> str:
        """A candidate's cache label, in calibration's key order (fixed parameters, then the
        grid's): the cache file stores dicts with sorted keys, so the order must not come from
        the dict, or a resumed run would miss every guided candidate."""
        fixed = list(DEFAULT.params_for(name))
        order = {k: i for i, k in enumerate(dict.fromkeys(fixed + list(strategies.get(name).grid)))}
        keys = sorted(params, key=lambda k: (order.get(k, len(order)), k))
        return ",".join(f"{k}={params[k]}" for k in keys)

    # -- evaluation -----------------------------------------------------------------
    def _model(self) -> torch.nn.Module:
        """The one model merges are loaded into, with the evaluators' quartiles fixed by the base,
        made on first use: a run whose cache holds every entry (--partial, the assembly after
        --workers, a rerun) loads no model and runs no quartile pass."""
        if self.model is None:
            self.model = load_model(self.base, self.device, resolve_dtype(self.opts.dtype, self.device))
            self.dev.set_quartiles(self.model, self.base.family)
            self.test.set_quartiles(self.model, self.base.family)
        return self.model

    def _load(self, cfg: Dict[str, Any]) -> None:
        overwrite_params(params_by_name(self._model()), mk.merge_in_memory(cfg, seed=self.opts.seed).items())

    def _load_dir(self, path: str) -> None:
        ck = Checkpoint.open(path)
        params = params_by_name(self._model())
        overwrite_params(params, ((name, ck.get(name)) for name in ck.tensors if name in params))  # read lazily

    def _eval(self, ev: Evaluator, tasks: List[str]) -> Dict[str, Any]:
        res = ev.run(self._model(), self.base.family, tasks=tasks)
        # per-instruction correctness too, so the report can pair two methods over the same instructions
        # (entries cached before this was kept lack it; the report then says so)
        return {t: {"accuracy": r["accuracy"], "logprob": r["logprob"], "n": r["n"], "quartiles": r["quartiles"],
                    **({"correct": r["correct"]} if r.get("correct") else {})}
                for t, r in res.items()}

    def _cached(self, key: str, compute: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        """The cache's entry for `key`, computed and saved at once if missing (so a kill loses at
        most the entry in progress); under --partial a missing entry ends the combination."""
        if key not in self.cache:
            if self.opts.partial:
                raise NotCached(key)
            # in the form the cache file gives back (sorted keys), so results.json is the same
            # whether this run computed the entry or a killed one did
            self.cache[key] = json.loads(json.dumps(compute(), sort_keys=True))
            self._save_cache()
        return self.cache[key]

    def _merged(self, cfg: Callable[[], Dict[str, Any]], ev: Evaluator, tasks: List[str]) -> Dict[str, Any]:
        self._load(cfg())
        return self._eval(ev, tasks)

    def _reference(self, path: str, tasks: List[str]) -> Dict[str, Any]:
        self._load_dir(path)
        return {"test": self._eval(self.test, tasks)}

    def run_combo(self, combo: Tuple[str, ...]) -> Dict[str, Any]:
        tasks = list(combo)
        retention = list(self.suite.retention.get("test", {})) + list(self.suite.quality.get("test", {}))
        tag = "+".join(combo)
        result: Dict[str, Any] = {}
        for name in ("base", *combo):
            path = self.suite.base if name == "base" else self.suite.experts[name]
            result["base" if name == "base" else f"expert:{name}"] = self._cached(
                f"ref|{tag}|{name}", lambda path=path: self._reference(path, tasks + retention))
        for method, cands in self.methods(combo).items():
            dev_scores = []
            for c in cands:
                dev = self._cached(f"dev|{tag}|{method}|{c.label}", lambda c=c: self._merged(c.recipe, self.dev, tasks))
                dev_scores.append(np.mean([dev[t]["accuracy"] for t in tasks]))
            if not np.isfinite(dev_scores).all():  # argmax would pick a NaN: an empty dev task
                raise UserError(f"{tag} {method}: a dev accuracy is not a number (dev tasks {tasks}); "
                                "does every task's dev split hold probes?")
            best = cands[int(np.argmax(dev_scores))]
            test = self._cached(f"test|{tag}|{method}|{best.label}",
                                lambda: self._merged(best.recipe, self.test, tasks + retention))
            result[method] = {"chosen": best.label, "dev": float(max(dev_scores)), "test": test,
                              "candidates": len(cands)}
            if self.opts.progress and not self.opts.partial:
                acc = np.mean([test[t]["accuracy"] for t in tasks])
                print(f"  {'+'.join(combo):<22} {method:<20} test {acc:.3f} ({best.label})", file=sys.stderr)
        return result

    def _save_cache(self) -> None:
        self.cache = save_cache(self.out / "cache.json", self.cache)


def resolve_suite(ref: str) -> Suite:
    p = Path(ref)
    if p.is_file():
        return Suite.from_file(ref)
    if p.is_dir() and (p / "zoo.json").is_file():
        return Suite.from_zoo(p)
    if not p.exists():
        from ..zoo import locate

        return Suite.from_zoo(locate(ref))
    raise UserError(f"suite {ref!r}: expected a zoo name, a zoo directory or a suite JSON")


def parse_sizes(sizes: str) -> List[int]:
    try:
        ks = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--sizes {sizes!r}: expected comma-separated positive integers like 2,3")
    return ks


def combos(experts: List[str], sizes: str) -> List[Tuple[str, ...]]:
    out = [c for k in parse_sizes(sizes) for c in itertools.combinations(experts, k)]
    if not out:
        raise UserError(f"no combinations of sizes {sizes} from {len(experts)} experts")
    return out


def prepare_scores(opts: CompareOptions) -> Tuple[Suite, Path, Path]:
    """(suite, output folder, scores file), scoring the suite's experts if OUT has no scores."""
    suite = resolve_suite(opts.suite)
    suite.check()
    out = Path(opts.out)
    probes = [f for kind in (suite.splits, suite.retention, suite.quality)
              for files in kind.values() for f in files.values()]
    check_inputs(out, [suite.base, *suite.experts.values(), *probes], "results folder", replaced=False)
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / "scores.json"
    if not scores_path.exists() and opts.partial:
        raise UserError(f"--partial computes nothing, and {scores_path} does not exist: the comparison has not "
                        "started in this folder (run it without --partial)")
    if not scores_path.exists():
        from ..patching.score import score

        if opts.progress:
            print(f"scoring {len(suite.experts)} experts of {suite.name} ...", file=sys.stderr)
        score(ScoreOptions(base=suite.base, experts=dict(suite.experts), probes=dict(suite.splits["score"]),
                           out=str(scores_path), method=opts.score_method, device=opts.device,
                           progress=opts.progress))
    return suite, out, scores_path


def build_harness(opts: CompareOptions) -> Harness:
    """Everything the comparison needs: suite, scores (computed if missing), dev/test
    evaluators, the cache; the model merges are loaded into comes when first needed."""
    suite, out, scores_path = prepare_scores(opts)
    from ..scores import read_scores

    scores = read_scores(scores_path)
    dev = resolve_device(opts.device)
    base = Checkpoint.open(suite.base, "base")
    tok = load_tokenizer([base, *(Checkpoint.open(p, n) for n, p in suite.experts.items())])
    quality = suite.quality.get("test", {})
    metrics = {**suite.metrics, **{t: "logprob" for t in quality}}
    mkw = dict(batch_size=opts.batch_size, max_new_tokens=suite.max_new_tokens, device=dev)
    dev_ev = Evaluator(dict(suite.splits["dev"]), tok, {t: m for t, m in metrics.items() if t in suite.splits["dev"]},
                       max_probes=opts.max_dev_probes, **mkw)
    test_tasks = {**suite.splits["test"], **suite.retention.get("test", {}), **quality}
    test_ev = Evaluator(test_tasks, tok, {t: m for t, m in metrics.items() if t in test_tasks},
                        max_probes=opts.max_test_probes, **mkw)
    cache = load_cache(out / "cache.json", {**protocol_of(suite, opts, scores_path), "search": search_space(opts)})
    return Harness(opts, suite, scores, out, dev_ev, test_ev, base, dev, cache)


def guided_strategies(opts: CompareOptions) -> List[str]:
    return list(opts.strategies_) or [s for s in strategies.STRATEGIES if s != "uniform"]


def search_space(opts: CompareOptions) -> Dict[str, Any]:
    """What each method may propose, for the cache's protocol: the baselines' grids, each guided
    strategy's calibration grid, the default strategy and the calibration objective. These live in
    code, so a change to them would otherwise resume on candidates chosen from the old ones."""
    guided = guided_strategies(opts)
    return {"task_arithmetic": TA_GRID[:opts.candidates], "sparse": [list(g) for g in SPARSE_GRID[:opts.candidates]],
            "guided": {n: strategies.get(n).grid for n in sorted(set(guided) | {DEFAULT.strategy})},
            "default": {"strategy": DEFAULT.strategy, "score": DEFAULT.score, "params": DEFAULT.params},
            "objective": RecipeOptions.__dataclass_fields__["objective"].default}


def compare(opts: CompareOptions) -> Dict[str, Any]:
    opts.validate()
    if opts.workers > 1:
        prepare_scores(opts)  # once, before the workers read them
        run_workers(opts)
    h = build_harness(opts)
    todo = combos(list(h.suite.experts), opts.sizes)
    if opts.shard:
        i, n = shard_of(opts.shard)
        mine = todo[i - 1::n]
        for c in mine:
            h.run_combo(c)
        return {"shard": opts.shard, "combinations": ["+".join(c) for c in mine]}
    results = {}
    for c in todo:
        try:
            results["+".join(c)] = h.run_combo(c)
        except NotCached:  # only under --partial
            pass
    if not results:
        raise UserError(f"--partial: no combination is complete in {h.out / 'cache.json'} yet "
                        f"({len(todo)} to run); run without --partial to compute them")
    from .report import summarize, write_report

    summary = summarize(results, h.suite, default=f"guided:{DEFAULT.strategy}")
    data = {"suite": h.suite.name, "protocol": {"candidates": opts.candidates, "sizes": opts.sizes,
                                                "seed": opts.seed, "score_method": opts.score_method,
                                                "default": DEFAULT.strategy},
            "summary": summary, "combinations": results}
    stem = "results"
    if opts.partial:
        stem = "results-partial"
        data["partial"] = {"complete": list(results), "missing": ["+".join(c) for c in todo
                                                                   if "+".join(c) not in results]}
    atomic_write_text(h.out / f"{stem}.json", dumps(data))
    write_report(data, h.out, stem)
    return data
