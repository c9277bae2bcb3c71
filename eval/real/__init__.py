"""Real LLMs through the whole mechmerge pipeline, on CPU, one cached stage at a time.

    python -m eval.real.pipeline --model smollm2 --stages import,data

    models.py       the real models and where their GGUF files come from (PyPI packages)
    runner.py       stage registry and runner: atomic artifacts, skip when complete, resume
    pipeline.py     the command line
    stages/         one module per stage (import, data; finetune, score, ... to come)
    topics.py       plain instructions from topic and template lists
    constraints.py  constraints: instruction phrasings and answer transforms
    verifiers.py    one checker per constraint (IFEval-style)
    generate.py     batched greedy chat generation with a resumable journal
"""
