"""Progress bar for scoring runs: one bar over all jobs, labelled with the current stage."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool = True):
        self.bar = tqdm(total=0, disable=not enabled, file=sys.stderr, unit="job", dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def stage(self, desc: str) -> None:
        self.bar.set_description_str(desc)

    def add_total(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def tick(self) -> None:
        self.bar.update(1)
