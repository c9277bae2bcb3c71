"""The bridge to mergekit's engine: validate (plan without executing), merge in memory,
merge to disk. mechmerge does no merge arithmetic of its own; everything goes through
mergekit's planner and executor so a recipe behaves exactly as `mergekit-yaml` runs it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional

import torch
import yaml

from ..errors import UserError, did_you_mean

SUPPORTED_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "della", "della_linear",
                     "breadcrumbs", "breadcrumbs_ties", "linear")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """mergekit logs and prints progress per tensor; keep our output readable.

    transformers has its own logger with its own handler (it does not propagate to the root
    and keeps the stderr it started with), so it is quieted as every model load quiets it:
    mergekit 0.1.5 sets `config.torch_dtype` on the merged config, which transformers 5 answers
    with a deprecation warning that is mergekit's, not the user's, to act on."""
    from ..models.load import quiet_transformers

    quiet_transformers()
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def method_spec(method: str):
    from mergekit import merge_methods

    if method not in SUPPORTED_METHODS:
        from ..errors import unknown

        raise unknown("merge method", method, SUPPORTED_METHODS)
    return merge_methods.get(method).spec


def parameter_names(method: str) -> Dict[str, str]:
    """name -> 'shared' or 'per-model' for a mergekit method."""
    spec = method_spec(method)
    return {p.name: ("shared" if p in spec.shared_parameters else "per-model") for p in spec.parameters}


def _used_parameters(cfg: Dict[str, Any]) -> Iterable[tuple]:
    for name in (cfg.get("parameters") or {}):
        yield name, "top-level parameters"
    for m in cfg.get("models") or []:
        for name in (m.get("parameters") or {}):
            yield name, f"parameters of model {m.get('model')!r}"


def check_parameter_names(cfg: Dict[str, Any]) -> None:
    """mergekit silently ignores unknown parameter names; we refuse them."""
    method = cfg.get("merge_method")
    if not isinstance(method, str):
        raise UserError("recipe has no merge_method")
    known = parameter_names(method)
    for name, where in _used_parameters(cfg):
        if name not in known:
            raise UserError(f"merge method {method!r} has no parameter {name!r} ({where}){did_you_mean(name, known)}; "
                            f"valid: {', '.join(known)}")


def parse_config(cfg: Dict[str, Any]):
    from mergekit.config import MergeConfiguration

    try:
        return MergeConfiguration.model_validate(cfg)
    except Exception as e:  # pydantic.ValidationError: name the first problem only
        first = str(e).splitlines()
        raise UserError(f"recipe is not a valid mergekit configuration: {' '.join(first[:3])}") from None


def load_recipe_yaml(path: str) -> Dict[str, Any]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {path!r} not found")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{at}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a YAML mapping (a mergekit configuration)")
    if "merge_method" not in cfg:
        raise UserError(f"{path}: not a mergekit configuration (no merge_method; a recipe has merge_method, "
                        "base_model and models)")
    return cfg


def _model_refs(cfg: Dict[str, Any]) -> Iterable[str]:
    if isinstance(cfg.get("base_model"), str):
        yield cfg["base_model"]
    for m in cfg.get("models") or []:
        if isinstance(m, dict) and isinstance(m.get("model"), str):
            yield m["model"]


def check_model_paths(cfg: Dict[str, Any]) -> None:
    """A model that is plainly a local path must exist: mergekit would take it for a Hub id
    and answer with a message about repo ids. Hub ids ('org/name') and mergekit's 'model+lora'
    syntax are left to mergekit."""
    import os
    from pathlib import Path

    for ref in _model_refs(cfg):
        local = ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or (os.sep != "/" and os.sep in ref)
        if local and "+" not in ref and not Path(ref).expanduser().is_dir():
            rel = ("" if Path(ref).expanduser().is_absolute()
                   else f" (relative paths resolve from the current directory, {os.getcwd()})")
            raise UserError(f"model {ref!r} named in the recipe not found{rel}")


def _planner(config, options):
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import _model_out_config
    from mergekit.plan import MergePlanner

    arch = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    out_cfg = _model_out_config(config, arch, trust_remote_code=options.trust_remote_code)
    return MergePlanner(config, arch, options=options, out_model_config=out_cfg)


def validate(cfg: Dict[str, Any]) -> None:
    """Plan the merge with mergekit's own planner without running it.

    Catches what `model_validate` lets through: unknown or missing parameters, bad
    methods, architectures mergekit cannot handle, missing models.
    """
    from mergekit.options import MergeOptions

    check_parameter_names(cfg)
    check_model_paths(cfg)
    config = parse_config(cfg)
    try:
        with _quiet(), tempfile.TemporaryDirectory() as tmp:
            _planner(config, MergeOptions(quiet=True)).plan_to_disk(tmp)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"mergekit cannot plan this recipe: {e}") from None


def merge_in_memory(cfg: Dict[str, Any], device: str = "cpu", seed: int = 0) -> Dict[str, torch.Tensor]:
    """Run a recipe through mergekit's planner and executor, returning the tensors.

    `seed` seeds torch first, as `mergekit-yaml --random-seed` does, so random
    sparsification (dare_*, della*) is reproducible."""
    from mergekit.graph import Executor
    from mergekit.options import MergeOptions

    config = parse_config(cfg)
    options = MergeOptions(quiet=True, device=device)
    torch.manual_seed(seed)
    with _quiet():
        planner = _planner(config, options)
        # mergekit 0.1.5's plan_in_memory() fails to build its ReturnTensor tasks
        # (pydantic re-validates the generic Task field); plan as plan_in_memory
        # does and collect each tensor task's result ourselves.
        planner._plan()
        tasks = [_collect_cls()(name=w.name, tensor_task=t) for w, t in planner._tensors]
        out: Dict[str, torch.Tensor] = {}
        for task, value in Executor(targets=tasks, math_device=options.device, storage_device="cpu").run(quiet=True):
            out[task.name] = value
    return out


@functools.lru_cache(maxsize=1)
def _collect_cls():
    """A task returning one merged tensor (built lazily: importing mergekit is slow)."""
    from mergekit.graph import Task

    class Collect(Task[torch.Tensor]):
        name: str
        tensor_task: Task

        def arguments(self):
            return {"tensor": self.tensor_task}

        def priority(self) -> int:
            return 10000

        def execute(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor

    return Collect


def run_to_dir(cfg_text: str, out_dir: str, cuda: bool = False, out_shard_size: Optional[int] = None,
               lazy_unpickle: bool = False, quiet: bool = True, random_seed: Optional[int] = None) -> None:
    """`mergekit-yaml` as a function call: same planner, same executor, same files."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = parse_config(yaml.safe_load(cfg_text))
    # no mergekit card: mechmerge writes its own, and mergekit's asks the Hub whether each
    # relative `dir/sub` model path is a repository (offline: an error after the whole merge)
    kw: Dict[str, Any] = {"device": "cuda" if cuda else "cpu", "quiet": quiet, "lazy_unpickle": lazy_unpickle,
                          "write_model_card": False}
    if out_shard_size is not None:
        kw["out_shard_size"] = out_shard_size
    if random_seed is not None:
        kw["random_seed"] = random_seed
    ctx = _quiet() if quiet else contextlib.nullcontext()
    with ctx:
        run_merge(config, out_dir, options=MergeOptions(**kw), config_source=cfg_text)
    # what mergekit writes beside its card, which is switched off: the recipe as it ran
    (Path(out_dir) / "mergekit_config.yml").write_text(cfg_text, encoding="utf-8")
