"""Build a zoo: a base model, specialists fine-tuned from it, probe splits, a manifest.

A zoo is data (`ZooSpec`), and `build_zoo` is plan then execute: the spec is checked
and the work counted before anything trains. Everything is fixed by the seed:

    probes   held-out splits (score, dev, test) of every skill, drawn first so that
             training can refuse their prompts
    base     a Llama trained from scratch on the general skills
    experts  one copy of the base per specialist skill, fine-tuned on that skill with
             `replay` of the base's data so the general skills are kept
    measure  greedy exact match of the base and of every expert on every test split

Layout of the output directory (all paths in zoo.json are relative to it):

    base/  experts/<skill>/  checkpoints/<skill>/step-<N>/   Hugging Face model dirs
    probes/<skill>.{score,dev,test}.jsonl                    {"prompt", "response"} lines
    zoo.json                                                 the manifest
"""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import __version__
from ..errors import UserError, did_you_mean, unknown
from ..io import atomic_dir, check_output, dumps
from . import SHIPPED
from . import skills as skills_mod
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, build_char_tokenizer, vocab_size
from .train import Pair, TrainConfig, train

FORMAT = "mechmerge-zoo"
VERSION = 1
SPLITS = ("score", "dev", "test")


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int = 64
    intermediate_size: int = 128  # 2x hidden: keeps 8 models of a shipped zoo near 5 MB
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as in current Llama-family models
    max_position_embeddings: int = 64  # longest zoo sequence is ~30 tokens

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab_size(), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                           tie_word_embeddings=False,  # lm_head is its own module for patching and merging
                           **dataclasses.asdict(self))


@dataclass(frozen=True)
class ZooSpec:
    name: str
    seed: int
    specialists: Tuple[str, ...]
    general: Tuple[str, ...] = ("copy", "twice")
    model: ModelSpec = field(default_factory=ModelSpec)
    # The base pretrains on general skills and on every specialist computation in latent
    # form (5000 steps: all latent skills learned); a specialist then only binds its
    # instruction to the computation: 500 steps at 1e-3 give >= 95% with task vectors
    # ~10% of the base's norm. Trained from scratch instead (1500 steps at 3e-3) the
    # task vectors were ~55% of the base and no merge method reached 5% on any pair.
    base_steps: int = 5000
    expert_steps: int = 500
    batch_size: int = 64
    replay: float = 0.25  # fraction of each specialist batch drawn from the general skills
    base_lr: float = 3e-3
    expert_lr: float = 1e-3
    probes: Tuple[int, int, int] = (32, 64, 128)  # probes per skill in the score, dev, test splits
    track: Optional[str] = None  # specialist whose intermediate checkpoints are kept (None: the first)
    checkpoints: int = 3  # intermediate checkpoints of the tracked specialist, evenly spaced
    # skills the base pretrains on in latent form (see skills.LATENT_MARKS) and their share
    # of the base's data; the specialists' replay draws from the same mixture
    latent: Tuple[str, ...] = ("rev", "swap", "shift", "upper", "sort", "dedup", "add", "count")
    latent_share: float = 0.6

    @property
    def skills(self) -> Tuple[str, ...]:
        return self.general + self.specialists

    @property
    def tracked(self) -> Optional[str]:
        return (self.track or self.specialists[0]) if self.checkpoints and self.specialists else None

    def checkpoint_steps(self) -> List[int]:
        n = self.checkpoints
        return sorted({round(k * self.expert_steps / (n + 1)) for k in range(1, n + 1)} - {0, self.expert_steps})

    def validate(self) -> None:
        for s in self.skills:
            skills_mod.get(s)
        for s in self.general:
            if not skills_mod.get(s).general:
                raise UserError(f"zoo {self.name!r}: {s!r} is a specialist skill, not a general one")
        for s in self.specialists:
            if skills_mod.get(s).general:
                raise UserError(f"zoo {self.name!r}: {s!r} is a general skill, not a specialist one")
        if len(set(self.skills)) != len(self.skills):
            raise UserError(f"zoo {self.name!r}: a skill is listed twice in {self.skills}")
        if not self.general:
            raise UserError(f"zoo {self.name!r}: the base needs at least one general skill")
        if self.track is not None and self.track not in self.specialists:
            raise UserError(f"zoo {self.name!r}: track={self.track!r} is not one of its specialists")
        if not 0 <= self.replay < 1:
            raise UserError(f"zoo {self.name!r}: replay must be in [0, 1), got {self.replay}")
        if min(self.probes) < 1 or self.base_steps < 1 or self.expert_steps < 1 or self.batch_size < 1:
            raise UserError(f"zoo {self.name!r}: probe split sizes, steps and batch size must be positive")


ZOOS: Dict[str, ZooSpec] = {
    spec.name: spec
    for spec in [
        # one specialist per kind of computation: routing, remap, compare, arithmetic
        ZooSpec("alpha", seed=1, specialists=("rev", "shift", "sort", "add")),
        ZooSpec("beta", seed=2, specialists=("swap", "upper", "dedup", "count")),
    ]
}


def zoo_spec(name: str = "alpha", seed: Optional[int] = None, **overrides: Any) -> ZooSpec:
    """The named zoo's spec, with another seed or any field replaced (e.g. for a miniature build)."""
    if name not in ZOOS:
        raise unknown("zoo", name, ZOOS)
    spec = ZOOS[name]
    fields = {f.name for f in dataclasses.fields(ZooSpec)}
    for key in overrides:
        if key not in fields:
            raise UserError(f"zoo spec has no field {key!r}{did_you_mean(key, fields)}")
    if seed is not None:
        overrides["seed"] = seed
    spec = dataclasses.replace(spec, **overrides)
    spec.validate()
    return spec


# --- probes -----------------------------------------------------------------------------

def draw_splits(skill: str, seed: int, sizes: Sequence[int]) -> Dict[str, List[Pair]]:
    """Disjoint splits of distinct prompts (score, dev, test) for one skill."""
    rng = random.Random(f"zoo:{seed}:{skill}:probes")
    sk = skills_mod.get(skill)
    seen: Dict[str, str] = {}
    need = sum(sizes)
    for _ in range(50 * need):
        p, r = sk.sample(rng)
        seen.setdefault(p, r)
        if len(seen) == need:
            break
    else:
        raise UserError(f"skill {skill!r} gave only {len(seen)} distinct prompts for {need} probes")
    pairs = list(seen.items())
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes):
        out[split] = pairs[start: start + n]
        start += n
    return out


def write_jsonl(path: Path, pairs: Sequence[Pair]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p, r in pairs:
            f.write(json.dumps({"prompt": p, "response": r}) + "\n")


def read_jsonl(path: Path) -> List[Pair]:
    with open(path, encoding="utf-8") as f:
        return [(o["prompt"], o["response"]) for o in map(json.loads, f) if o]


def stream(names: Sequence[str], weights: Sequence[float], held_out: set, max_len: int) -> Callable:
    """A sampler over a weighted mixture of skills that never yields a held-out prompt.

    A name "latent:SKILL" draws SKILL in its latent (pretraining) form; the held-out
    check is on the instruction form, so a probe's input is never seen in either form."""
    chosen = [(n.startswith("latent:"), skills_mod.get(n.split(":", 1)[-1])) for n in names]

    def sample(rng: random.Random) -> Pair:
        while True:
            latent, sk = rng.choices(chosen, weights)[0]
            p, r = sk.sample(rng)
            if p in held_out:
                continue
            if latent:
                p = skills_mod.latent_prompt(sk.name, p)
            if len(p) + len(r) + 2 > max_len:  # BOS and EOS
                raise UserError(f"skill {sk.name!r} made a {len(p) + len(r) + 2}-token example, longer "
                                f"than max_position_embeddings={max_len}")
            return p, r

    return sample


# --- building ---------------------------------------------------------------------------

class NullProgress:
    def stage(self, desc: str) -> None: ...
    def add_total(self, n: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...


def save_model(model, path: Path) -> None:
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)


def load_model(path: Path):
    from ..models.load import pretrained, quiet_transformers

    quiet_transformers()
    return pretrained(path, dtype=torch.float32).eval()


def measure(model, tokenizer, pairs: Sequence[Pair], max_new_tokens: int, batch_size: int = 128) -> float:
    """Greedy exact-match accuracy of `model` on (prompt, response) pairs."""
    from ..evaluate.generate import exact_match, greedy_generate

    preds = greedy_generate(model, tokenizer, [p for p, _ in pairs], max_new_tokens, batch_size)
    return sum(exact_match(pred, r) for pred, (_, r) in zip(preds, pairs)) / len(pairs)


def build_zoo(name: str, out_dir: str | Path, *, seed: Optional[int] = None,
              force: bool = False, progress=None, **overrides: Any) -> Path:
    """Build zoo `name` into `out_dir` (atomically) and return its path.

    `overrides` replace fields of the zoo's `ZooSpec` (steps, sizes, model, ...), which
    is how tests build a miniature zoo in seconds. `progress` has stage(desc),
    add_total(n) and advance(n) (mechmerge.patching.progress.Progress fits).
    """
    from ..models.load import quiet_transformers

    quiet_transformers()
    spec = zoo_spec(name, seed, **overrides)
    # the shipped zoos are package data, not outputs: never written into, replaced, or deleted with a folder
    out = check_output(Path(out_dir), force, "zoo directory", directory=True, inputs=[SHIPPED], looks_like="zoo.json")
    progress = progress or NullProgress()
    n_models = 1 + len(spec.specialists)
    progress.add_total(len(spec.skills) + spec.base_steps + len(spec.specialists) * spec.expert_steps
                       + n_models * len(spec.skills))
    # One thread: models this small gain nothing from more, and a fixed count keeps
    # float reductions (hence the weights) the same on machines with more cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        with atomic_dir(out, force) as tmp:
            held_out, longest = write_probes(spec, tmp, progress)
            losses = train_models(spec, tmp, held_out, progress)
            manifest = make_manifest(spec, tmp, losses)
            # room for 4 tokens past the longest reference: a model that does not stop
            # is wrong, not cut to the right length
            manifest["max_new_tokens"] = longest + 4
            manifest["accuracy"] = measure_all(spec, tmp, manifest, progress)
            manifest["build"] = build_info(time.time() - t0)
            (tmp / "zoo.json").write_text(dumps(manifest), encoding="utf-8")
    finally:
        torch.set_num_threads(threads)
    return out


def write_probes(spec: ZooSpec, root: Path, progress) -> Tuple[set, int]:
    """Write every skill's splits; return their prompts, which training must never see,
    and the length of the longest response."""
    progress.stage("probes")
    (root / "probes").mkdir()
    held_out: set = set()
    longest = 0
    for s in spec.skills:
        for split, pairs in draw_splits(s, spec.seed, spec.probes).items():
            write_jsonl(root / probe_path(s, split), pairs)
            held_out.update(p for p, _ in pairs)
            longest = max(longest, *(len(r) for _, r in pairs))
        progress.advance()
    return held_out, longest


def probe_path(skill: str, split: str) -> str:
    return f"probes/{skill}.{split}.jsonl"


def checkpoint_path(skill: str, step: int) -> str:
    return f"checkpoints/{skill}/step-{step}"


def train_models(spec: ZooSpec, root: Path, held_out: set, progress) -> Dict[str, float]:
    """Train and save the base, then each specialist from it; return final losses."""
    from transformers import LlamaForCausalLM

    max_len = spec.model.max_position_embeddings
    losses: Dict[str, float] = {}
    progress.stage("base")
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(spec.model.config())
    mixture, weights = base_mixture(spec)
    data = stream(mixture, weights, held_out, max_len)
    cfg = TrainConfig(spec.base_steps, spec.base_lr, spec.batch_size, seed=spec.seed * 100)
    losses["base"] = train(model, data, cfg, lambda step, loss: progress.advance())[-1]
    save_model(model, root / "base")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    for i, s in enumerate(spec.specialists, 1):
        progress.stage(f"expert {s}")
        model.load_state_dict(base_state)
        keep = set(spec.checkpoint_steps()) if s == spec.tracked else set()

        def on_step(step: int, loss: float, s: str = s, keep: set = keep) -> None:
            if step in keep:
                save_model(model, root / checkpoint_path(s, step))
            progress.advance()

        data = stream([s, *mixture], [1 - spec.replay] + [spec.replay * w for w in weights], held_out, max_len)
        cfg = TrainConfig(spec.expert_steps, spec.expert_lr, spec.batch_size, seed=spec.seed * 100 + i)
        losses[s] = train(model, data, cfg, on_step)[-1]
        save_model(model, root / "experts" / s)
    return losses


def base_mixture(spec: ZooSpec) -> Tuple[List[str], List[float]]:
    """The base's training data: general skills, plus latent skills at `latent_share`
    (weights sum to 1). Specialists replay this same mixture."""
    names = list(spec.general) + [f"latent:{s}" for s in spec.latent]
    g = (1.0 - (spec.latent_share if spec.latent else 0.0)) / len(spec.general)
    lat = spec.latent_share / len(spec.latent) if spec.latent else 0.0
    return names, [g] * len(spec.general) + [lat] * len(spec.latent)


def make_manifest(spec: ZooSpec, root: Path, losses: Dict[str, float]) -> Dict[str, Any]:
    skills = {}
    for s in spec.skills:
        info = skills_mod.get(s)
        skills[s] = {"general": info.general, "nature": info.nature, "doc": info.doc,
                     "probes": {split: probe_path(s, split) for split in SPLITS}}
    tracked = spec.tracked
    return {
        "format": FORMAT, "version": VERSION, "name": spec.name, "seed": spec.seed,
        "general": list(spec.general), "specialists": list(spec.specialists), "skills": skills,
        "base": "base", "experts": {s: f"experts/{s}" for s in spec.specialists},
        "checkpoints": {tracked: {str(n): checkpoint_path(tracked, n) for n in spec.checkpoint_steps()}}
        if tracked else {},
        "model_config": {"architecture": "LlamaForCausalLM", "vocab_size": vocab_size(),
                         **dataclasses.asdict(spec.model)},
        "spec": dataclasses.asdict(spec),
        "final_loss": losses,
    }


def measure_all(spec: ZooSpec, root: Path, manifest: Dict[str, Any], progress) -> Dict[str, Any]:
    """Greedy exact match of the base and every expert on every skill's test split,
    measured on the saved models as loaded back from disk."""
    progress.stage("measure")
    tokenizer = build_char_tokenizer()
    tests = {s: read_jsonl(root / probe_path(s, "test")) for s in spec.skills}
    acc: Dict[str, Dict[str, float]] = {}
    for who, rel in [("base", manifest["base"]), *manifest["experts"].items()]:
        model = load_model(root / rel)
        acc[who] = {}
        for s in spec.skills:
            acc[who][s] = measure(model, tokenizer, tests[s], manifest["max_new_tokens"])
            progress.advance()
    base = load_model(root / manifest["base"])
    latent = {s: measure(base, tokenizer, [(skills_mod.latent_prompt(s, p), r) for p, r in tests[s]],
                         manifest["max_new_tokens"]) for s in spec.specialists if s in spec.latent}
    return {"split": "test", "metric": "greedy exact match", "base": acc.pop("base"), "experts": acc,
            "base_latent_form": latent}


def build_info(seconds: float) -> Dict[str, Any]:
    import transformers

    return {"seconds": round(seconds, 1), "mechmerge": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}
