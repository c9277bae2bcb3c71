"""An independent check of one knockout score with plain transformers (no mechmerge swapper or
runner): the expert's mean response log-prob, with one module reverted to the base's weights.

    python eval/real_knockout_check.py --model gemma3-270m --expert uppercase \
        --module model.layers.10.mlp.down_proj --probes 8

Prints base, expert and reverted log-probs and knockout = (expert - reverted) / (expert - base),
the number `mechmerge score --max-probes N` gives for that unit.

`--scales 0.8,0.9,1.1` also prints the log-prob of base + s x (expert - base), the whole task
vector scaled: a specialist that overshoots its own probes (a value above the expert's at some
s < 1) is one explanation of negative knockouts.
"""

import argparse
import os

import torch
from transformers import AutoTokenizer

from mechmerge.models.load import pretrained
from mechmerge.probes import load_probes, tokenize_probe


def mean_logprob(model, toks) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for t in toks:
            ids = torch.tensor([t.ids])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            rows = torch.arange(t.response_start - 1, len(t.ids) - 1)
            total += logp[rows, ids[0, 1:][rows]].sum().item()
            n += len(rows)
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--expert", default="uppercase")
    ap.add_argument("--module", required=True, help="unit name, e.g. model.layers.10.mlp.down_proj")
    ap.add_argument("--probes", type=int, default=8, help="first N scoring probes")
    ap.add_argument("--scales", default="", help="comma-separated task-vector scales to measure too")
    a = ap.parse_args()
    root = os.path.join(os.environ.get("MECHMERGE_CACHE", os.path.expanduser("~/.cache/mechmerge")), "real", a.model)
    tok = AutoTokenizer.from_pretrained(f"{root}/base")
    toks = [tokenize_probe(p, tok) for p in load_probes(f"{root}/data/{a.expert}/score.jsonl", limit=a.probes)]
    base = pretrained(f"{root}/base", dtype=torch.float32)
    expert = pretrained(f"{root}/experts/{a.expert}", dtype=torch.float32)
    b, e = mean_logprob(base, toks), mean_logprob(expert, toks)
    base_params = dict(base.named_parameters())
    if a.scales:
        expert_params = {n: p.detach().clone() for n, p in expert.named_parameters()}
        for s in (float(x) for x in a.scales.split(",")):
            for name, p in expert.named_parameters():
                p.data.copy_(base_params[name].data + s * (expert_params[name] - base_params[name].data))
            m = mean_logprob(expert, toks)
            print(f"base + {s:g} x task vector: {m:.4f}  ({(m - b) / (e - b):.3f} of the gap)")
        for name, p in expert.named_parameters():
            p.data.copy_(expert_params[name])
    for name, p in expert.named_parameters():
        if name.startswith(a.module + "."):
            p.data.copy_(base_params[name].data)
    k = mean_logprob(expert, toks)
    print(f"base {b:.4f}  expert {e:.4f}  expert with {a.module} reverted {k:.4f}  "
          f"knockout {(e - k) / (e - b):+.4f}")


if __name__ == "__main__":
    main()
