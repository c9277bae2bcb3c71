"""The demo: the whole pipeline on the embedded zoo, guided vs uniform side by side
(`mechmerge demo`, the README's first command)."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..options import Options, opt


@dataclass
class DemoOptions(Options):
    zoo: str = field(default="alpha", metadata=opt("Zoo to run on."))
    experts: str = field(default="rev,shift", metadata=opt("Two or three of the zoo's experts, comma separated."))
    out: str = field(default="mechmerge-demo", metadata=opt("Working folder for scores, recipes, merges, results."))
    force: bool = field(default=False, metadata=opt("Start over in an existing working folder."))


# Written first into the demo's folder: --force starts over only in a folder that holds it.
MARKER = ".mechmerge-demo"
ARTIFACTS = ("scores.json", "guided.yaml", "uniform.yaml", "merged-guided", "merged-uniform", MARKER)
# what a killed demo leaves besides them: the scoring journal, atomic_dir's and atomic_write_text's temporaries
LEFTOVERS = re.compile(r"^(scores\.json\.journal(\.rank\d+)?|\.(scores\.json|guided\.yaml|uniform\.yaml)\..*\.tmp"
                       r"|\.merged-(guided|uniform)\.(.*\.partial|old))$")


def prepare_folder(out: Path, force: bool, zoo_root: Path) -> Path:
    """The demo's working folder, emptied of an earlier demo's artifacts under --force.

    Nothing but the demo's own artifacts is ever deleted, and only in a folder carrying the
    marker an earlier demo wrote (or holding nothing but such artifacts); the folder itself
    stays (so `--out .` works). The zoo's own folder is refused."""
    from ..errors import UserError
    from ..io import check_inputs

    check_inputs(out, [zoo_root], "demo folder", replaced=False)
    if out.is_symlink() and not out.exists():
        raise UserError(f"demo folder {str(out)!r} is a symbolic link that leads nowhere; remove it or choose "
                        "another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"demo folder {str(out)!r} is a file; choose another --out")
    entries = list(out.iterdir()) if out.is_dir() else []
    if entries and not force:
        raise UserError(f"{str(out)!r} exists; pass --force to start over, or --out another folder")
    ours = [e for e in entries if e.name in ARTIFACTS or LEFTOVERS.match(e.name)]
    if len(ours) < len(entries) and not (out / MARKER).is_file():  # all ours: an older demo's, from before the marker
        raise UserError(f"{str(out)!r} is not empty and is not a demo's folder (it has no {MARKER} file), so --force "
                        "will not delete anything in it; give --out a new or empty folder")
    for e in ours:  # anything else a user put in a demo's folder stays
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a folder `mechmerge demo` writes into; `mechmerge demo --force` may empty it\n")
    return out


def _step(msg: str) -> float:
    click.secho(f"\n== {msg}", bold=True, err=True)
    return time.perf_counter()


def run_demo(opts: DemoOptions) -> dict:
    from .. import zoo
    from ..errors import UserError
    from ..evaluate.run import Evaluator
    from ..merge.run import MergeRunOptions, merge
    from ..models.checkpoint import Checkpoint
    from ..models.load import load_model, load_tokenizer
    from ..patching.score import ScoreOptions, score
    from ..recipe.build import RecipeOptions, make_recipe

    t0 = time.perf_counter()
    root = zoo.locate(opts.zoo)
    names = [e.strip() for e in opts.experts.split(",") if e.strip()]
    all_experts = zoo.experts(root)
    for n in names:
        if n not in all_experts:
            from ..errors import unknown

            raise unknown("expert", n, all_experts)
    if not 2 <= len(names) <= 3:
        raise UserError("--experts takes two or three names")
    out = prepare_folder(Path(opts.out), opts.force, root)
    score_files, test_files = zoo.probe_files(root, "score"), zoo.probe_files(root, "test")
    general = zoo.manifest(root)["general"]
    base = zoo.base(root)

    t = _step(f"1/4 score: Weight Patching of {', '.join(names)} against the base ({opts.zoo} zoo)")
    score(ScoreOptions(base=str(base), experts={n: str(all_experts[n]) for n in names},
                       probes={n: str(score_files[n]) for n in names}, out=str(out / "scores.json")))
    click.echo(f"   {time.perf_counter() - t:.1f} s", err=True)

    t = _step("2/4 recipe: guided (default strategy, calibrated) and uniform task arithmetic (scale calibrated)")
    recipes = {
        "guided": make_recipe(RecipeOptions(scores=str(out / "scores.json"), out=str(out / "guided.yaml"))),
        "uniform": make_recipe(RecipeOptions(scores=str(out / "scores.json"), out=str(out / "uniform.yaml"),
                                             strategy="uniform", calibrate=True)),
    }
    for k, r in recipes.items():
        click.echo(f"   {k}: {r.strategy} {r.params}", err=True)
    click.echo(f"   {time.perf_counter() - t:.1f} s", err=True)

    t = _step("3/4 merge: mergekit's engine, model cards")
    for k in recipes:
        merge(MergeRunOptions(recipe=str(out / f"{k}.yaml"), out=str(out / f"merged-{k}")))
    click.echo(f"   {time.perf_counter() - t:.1f} s", err=True)

    t = _step("4/4 eval: held-out test splits (greedy exact match) and the base's general skills")
    ck = Checkpoint.open(str(base))
    tok = load_tokenizer([ck])
    tasks = {n: str(test_files[n]) for n in names + list(general)}
    ev = Evaluator(tasks, tok, max_new_tokens=24, batch_size=64)
    import torch

    ev.set_quartiles(load_model(ck, torch.device("cpu"), torch.float32), ck.family)
    models = {"base": base, **{f"expert {n}": all_experts[n] for n in names},
              "uniform merge": out / "merged-uniform", "guided merge": out / "merged-guided"}
    table = {}
    for label, path in models.items():
        m_ck = Checkpoint.open(str(path))
        table[label] = ev.run(load_model(m_ck, torch.device("cpu"), torch.float32), m_ck.family)
    click.echo(f"   {time.perf_counter() - t:.1f} s", err=True)
    _print_table(table, names, list(general))
    click.echo(f"\nartifacts in {out}/: scores.json, guided.yaml, uniform.yaml, merged-guided/, merged-uniform/ "
               f"(each with a model card); total {time.perf_counter() - t0:.0f} s", err=True)
    return table


def _print_table(table: dict, tasks: list, general: list) -> None:
    cols = tasks + ["mean"] + general
    click.echo("\n" + f"{'model':<16}" + "".join(f"{c:>9}" for c in cols))
    for label, res in table.items():
        accs = [res[t]["accuracy"] for t in tasks]
        row = accs + [sum(accs) / len(accs)] + [res[g]["accuracy"] for g in general]
        click.echo(f"{label:<16}" + "".join(f"{v:>9.3f}" for v in row))
    click.echo(f"(test exact-match accuracy; {', '.join(tasks)} are the merged skills, "
               f"{', '.join(general)} the base's general skills)")
