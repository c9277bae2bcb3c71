"""The suffix runner reproduces the model's own forward pass exactly."""

import torch
from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.load import load_model, load_tokenizer
from mechmerge.patching.runner import LayerRunner
from mechmerge.probes import load_probes, make_batches, pad_id_of, tokenize_all


def _setup(base, probes_file, batch_size=3):
    ck = Checkpoint.open(str(base))
    model = load_model(ck, torch.device("cpu"), torch.float32)
    tok = load_tokenizer([ck])
    batches = make_batches(tokenize_all(load_probes(probes_file), tok, None), batch_size, pad_id_of(tok))
    return ck, model, LayerRunner(model, ck.family), batches


def _hf_logprobs(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lp = torch.log_softmax(logits.float(), -1)
    return lp[batch.rows, batch.positions].gather(1, batch.targets[:, None]).squeeze(1)


def test_replay_from_every_layer_matches_hf_forward(family_base, probes_file):
    fam, base = family_base
    ck, model, runner, batches = _setup(base, probes_file)
    with torch.no_grad():
        for batch in batches:  # padded batches of different lengths
            ref = _hf_logprobs(model, batch)
            tr = runner.trace(batch)
            assert torch.allclose(runner.response_logprobs(tr.inputs[-1], batch), ref, atol=1e-5)
            for start in range(-1, runner.num_layers + 1):
                final, _ = runner.run_from(tr, start)
                # replaying recorded inputs through the same kernels is bit-exact
                assert torch.equal(final, tr.inputs[-1]), f"{fam}: replay from block {start} differs"


def test_capture_returns_block_output(family_base, probes_file):
    fam, base = family_base
    ck, model, runner, batches = _setup(base, probes_file)
    with torch.no_grad():
        tr = runner.trace(batches[0])
        for start in range(-1, runner.num_layers):  # -1: the embedding unit's full pass
            for cap in range(max(start, 0), runner.num_layers):
                _, mid = runner.run_from(tr, start, capture=cap)
                assert torch.equal(mid, runner.block_output(tr, cap))


def test_tail_buffers_give_the_grad_path_numbers(family_base, probes_file):
    """No-grad tails write logits into reused buffers; the numbers must equal the plain
    path (used under autograd) bit for bit, whatever batch came before (a stale buffer
    row must never leak into a shorter chunk)."""
    fam, base = family_base
    ck, model, runner, batches = _setup(base, probes_file, batch_size=2)
    finals = []
    with torch.no_grad():
        for b in batches:
            finals.append(runner.trace(b, keep_inputs=False).inputs[-1])
    for rnd in range(2):
        for b, final in zip(batches, finals):
            with torch.no_grad():
                lp, hit = runner.response_scores(final, b)
            with torch.enable_grad():
                ref_lp, ref_hit = runner.response_scores(final, b)
            assert torch.equal(lp, ref_lp.detach()), f"{fam}: buffered tail differs"
            assert torch.equal(hit, ref_hit)
    assert runner._tail_buffers, "the no-grad path did not use its buffers"


def test_tail_buffers_in_bfloat16(tmp_path, probes_file):
    """Low-precision logits go through a third buffer (the float32 copy): same numbers too."""
    from helpers import make_model

    base = make_model("llama", tmp_path / "base", tie=True)
    ck = Checkpoint.open(str(base))
    model = load_model(ck, torch.device("cpu"), torch.bfloat16)
    tok = load_tokenizer([ck])
    runner = LayerRunner(model, ck.family)
    for b in make_batches(tokenize_all(load_probes(probes_file), tok, None), 3, pad_id_of(tok)):
        with torch.no_grad():
            final = runner.trace(b, keep_inputs=False).inputs[-1]
            lp, hit = runner.response_scores(final, b)
        with torch.enable_grad():
            ref_lp, ref_hit = runner.response_scores(final, b)
        assert lp.dtype == torch.float32
        assert torch.equal(lp, ref_lp.detach()) and torch.equal(hit, ref_hit)
    assert any(k[1] == torch.float32 and k[2] == 2 for k in runner._tail_buffers)
