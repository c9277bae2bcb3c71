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
    "Why is {t} important?",
    "Describe {t} in a few sentences.",
    "What is the history of {t}?",
    "Give some advice to someone who wants to learn about {t}.",
    "Write a short paragraph about {t}.",
    "How does {t} affect everyday life?",
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


def build_questions(sizes: Dict[str, int], seed: int = 0) -> List[Question]:
    """`sizes[split]` questions per split, topic-disjoint between train/score and dev and test.

    Topics are shuffled and dealt to dev, test and train in proportion to the sizes asked;
    questions are then drawn (topic-major, random template) without repetition.
    """
    rng = random.Random(seed)
    topics = list(range(len(TOPICS)))
    rng.shuffle(topics)
    per_topic = len(TEMPLATES)
    need = {s: -(-sizes[s] // per_topic) for s in ("dev", "test")}  # at least enough topics
    total = sum(sizes.values())
    for s in ("dev", "test"):  # and at least their share, so one topic does not dominate
        need[s] = max(need[s], round(len(topics) * sizes[s] / total))
    if need["dev"] + need["test"] >= len(topics):
        raise ValueError(f"{len(topics)} topics cannot hold these split sizes: {sizes}")
    owned = {"dev": topics[: need["dev"]], "test": topics[need["dev"]: need["dev"] + need["test"]],
             "train": topics[need["dev"] + need["test"]:]}
    out: List[Question] = []
    for split, pool in (("dev", owned["dev"]), ("test", owned["test"]), ("train", owned["train"])):
        n = sizes[split] + (sizes["score"] if split == "train" else 0)
        pairs = [(ti, k) for ti in pool for k in range(per_topic)]
        if n > len(pairs):
            raise ValueError(f"split {split!r} needs {n} questions; its {len(pool)} topics give {len(pairs)}")
        rng.shuffle(pairs)
        # round-robin over topics so that every topic is used before any is used twice
        by_topic: Dict[int, List[int]] = {}
        for ti, k in pairs:
            by_topic.setdefault(ti, []).append(k)
        order = [(ti, by_topic[ti][r]) for r in range(per_topic) for ti in pool if r < len(by_topic[ti])]
        chosen = order[:n]
        for j, (ti, k) in enumerate(chosen):
            s = split if split != "train" or j < sizes["train"] else "score"
            out.append(Question(f"q{ti}-{k}", TOPICS[ti], k, TEMPLATES[k].format(t=TOPICS[ti]), s))
    return out
