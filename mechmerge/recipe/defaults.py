"""What `mechmerge recipe SCORES --out R.yaml` writes when given no options.

This is the best strategy the project knows, chosen by the comparison harness
(README, "Does guided merging beat uniform merging?"); change it only with numbers.
"""

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass(frozen=True)
class Default:
    strategy: str
    score: str
    params: Dict[str, Any] = field(default_factory=dict)
    calibrate: bool = True


DEFAULT = Default(strategy="mix", score="patch_in", params={}, calibrate=True)
