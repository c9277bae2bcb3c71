"""Plain instructions on varied topics, built from two hand-written lists (no downloads).

A question is a template filled with a topic. Splits are disjoint by *topic*: a dev or
test question never shares its topic with a train question, so a specialist cannot pass
the test by recalling a training answer. Score questions (Weight Patching probes) come
from the train topics but never repeat a train question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List

TOPICS = (
    "the ocean", "volcanoes", "honey bees", "the printing press", "solar panels", "chess", "coffee",
    "the moon", "rainforests", "bicycles", "photosynthesis", "the Roman Empire", "jazz music", "recycling",
    "sleep", "vaccines", "earthquakes", "electric cars", "the internet", "gardening", "penguins",
    "the water cycle", "friendship", "public libraries", "yoga", "the pyramids of Egypt", "rainbows",
    "baking bread", "wind turbines", "the human heart", "dinosaurs", "the Olympic Games", "compound interest",
    "learning a second language", "deserts", "glaciers", "the telephone", "democracy", "chocolate",
    "mountains", "owls", "the solar system", "tea", "origami", "public transport", "first aid",
    "the immune system", "classical music", "board games", "camping", "the microscope", "coral reefs",
    "the Great Wall of China", "typewriters", "clouds", "running", "budgeting", "the periodic table",
    "lighthouses", "elephants", "volunteering", "museums", "the Renaissance", "rivers", "comets",
    "street food", "kites", "time zones", "photography", "the stock market", "cheese making",
    "wolves", "the Arctic", "video games", "handwriting", "bridges", "vitamins", "thunderstorms",
    "the Silk Road", "painting with watercolors", "maps", "kangaroos", "octopuses", "trains",
    "the human brain", "meditation", "the violin", "forests", "ancient Greece", "tides",
    "composting", "airplanes", "spiders", "bamboo", "snow", "the post office", "rice", "fireworks",
    "robots", "hiking", "the compass", "batteries", "sunflowers", "sharks",
)

TEMPLATES = (
    "Explain {t} to a ten-year-old.",
    "What are some interesting facts about {t}?",
    "Why should people care about {t}?",
    "Describe {t} in a few sentences.",
    "What is the history of {t}?",
    "Give some advice to someone who wants to learn about {t}.",
    "Write a short paragraph about {t}.",
    "In what ways does everyday life involve {t}?",
    "What would you tell a friend about {t}?",
    "Summarize what people should know about {t}.",
    "What are common misconceptions about {t}?",
    "Tell me something surprising about {t}.",
)

SPLITS = ("train", "score", "dev", "test")


@dataclass(frozen=True)
class Question:
    id: str  # stable: "q<topic index>-<template index>"
    topic: str
    template: int
    text: str
    split: str


def build_questions(sizes: Dict[str, int], seed: int = 0, spare: float = 0.0) -> List[Question]:
    """`sizes[split]` questions per split plus `spare` of them again (at least 2), topic-disjoint
    between train/score, dev and test.

    Topics are shuffled and dealt to dev, test and train in proportion to `sizes`; each split
    then lists its (topic, template) pairs round-robin over its topics, in a seeded order, and
    takes what it needs from the front. Score questions are train-topic pairs set aside by a
    seeded hash. So the questions depend on `sizes` and `seed` only: raising `spare` appends
    questions and never changes the ones already there (generations cached for them stay valid).
    """
    rng = random.Random(seed)
    topics = list(range(len(TOPICS)))
    rng.shuffle(topics)
    per_topic = len(TEMPLATES)
    total = sum(sizes.values())
    want = {s: sizes[s] + max(2, int(sizes[s] * spare)) for s in SPLITS}
    need = {s: max(-(-want[s] // per_topic), round(len(topics) * sizes[s] / total)) for s in ("dev", "test")}
    if need["dev"] + need["test"] >= len(topics):
        raise ValueError(f"{len(topics)} topics cannot hold these split sizes: {want}")
    owned = {"dev": topics[: need["dev"]], "test": topics[need["dev"]: need["dev"] + need["test"]],
             "train": topics[need["dev"] + need["test"]:]}
    score_share = sizes["score"] / max(1, sizes["train"] + sizes["score"])

    def round_robin(pool: List[int], pairs: List[tuple]) -> List[tuple]:
        rng.shuffle(pairs)
        by_topic: Dict[int, List[int]] = {}
        for ti, k in pairs:
            by_topic.setdefault(ti, []).append(k)
        return [(ti, by_topic[ti][r]) for r in range(per_topic) for ti in pool if r < len(by_topic.get(ti, ()))]

    out: List[Question] = []
    for split in ("dev", "test", "train"):
        pool = owned[split]
        pairs = [(ti, k) for ti in pool for k in range(per_topic)]
        if split == "train":
            held = {p for p in pairs if random.Random(f"{seed}:score:{p}").random() < score_share}
            orders = {"train": round_robin(pool, [p for p in pairs if p not in held]),
                      "score": round_robin(pool, sorted(held))}
        else:
            orders = {split: round_robin(pool, pairs)}
        for s, order in orders.items():
            if want[s] > len(order):
                raise ValueError(f"split {s!r} needs {want[s]} questions; its topics give {len(order)}")
            out.extend(Question(f"q{ti}-{k}", TOPICS[ti], k, TEMPLATES[k].format(t=TOPICS[ti]), s)
                       for ti, k in order[: want[s]])
    return out
