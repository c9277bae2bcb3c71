"""load_model gives the lm_head a contiguous input: generation feeds it a strided view of the
last position, for which torch's matmul copied the whole head once per forward (Gemma-3's
262k-row head: 25x slower forwards)."""

from __future__ import annotations

import torch

from helpers import make_model
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model


def test_the_head_sees_a_contiguous_input_and_the_logits_do_not_change(tmp_path):
    path = make_model("llama", tmp_path / "m", layers=2)
    model = load_model(Checkpoint.open(str(path)), torch.device("cpu"), torch.float32)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits  # the head gets hidden[:, -1:, :], a strided view
        full = model(input_ids=ids).logits
    assert seen == [True, True]
    assert torch.allclose(last[:, -1], full[:, -1], atol=1e-6)
