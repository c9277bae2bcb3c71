"""What `mechmerge recipe SCORES --out R.yaml` writes when given no options.

This is the best strategy the project knows, chosen by the comparison harness
(README, "Does guided merging beat uniform merging?"); change it only with numbers.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Default:
    strategy: str
    score: str
    params: Dict[str, Any] = field(default_factory=dict)
    calibrate: bool = True

    def score_for(self, strategy: Optional[str]) -> str:
        """The score that drives `strategy` (None: the default one) when none is asked for."""
        return self.score if strategy in (None, self.strategy) else "patch_in"

    def params_for(self, strategy: Optional[str]) -> Dict[str, Any]:
        """The fixed parameters `strategy` starts from (the default strategy's; others none)."""
        return dict(self.params) if strategy in (None, self.strategy) else {}


DEFAULT = Default(strategy="mix", score="patch_in", params={}, calibrate=True)
