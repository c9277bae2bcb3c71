"""Real LLMs through the whole mechmerge pipeline, on CPU, one cached stage at a time.

    python -m eval.real.pipeline --model smollm2          # every stage: import, data, finetune, eval_experts,
                                                          # score, heatmaps, compare, report

    models.py       the real models and where their GGUF files come from (PyPI packages)
    runner.py       stage registry and runner: atomic artifacts, skip when complete, resume
    pipeline.py     the command line
    stages/         one module per stage
    artifacts.py    where stages find each other's outputs; results/<model>/ for the committed copies
    topics.py       plain instructions from topic and template lists
    constraints.py  constraints: instruction phrasings and answer transforms
    verifiers.py    one checker per constraint (IFEval-style)
    generate.py     batched greedy chat generation with a resumable journal
    train.py        deterministic, resumable fine-tuning (loss on response tokens, replay)
    metrics.py      the verifiers as mechmerge evaluation metrics ("eval.real.metrics:json")
    results/        per model: README.md (tables, heatmaps, runtimes), comparison results
"""
