"""topk and conflict on hand-made scores whose weights can be worked out on paper."""

import numpy as np
import pytest

from mechmerge.errors import UserError
from mechmerge.recipe.strategies import get
from mechmerge.recipe.view import ScoreView, UnitInfo

# expert a: unit 0 first, then 1; expert b: unit 1 first, then 2; unit 3 is nobody's (a scores it < 0)
SCORES = {"a": np.array([3.0, 1.0, 0.0, -1.0]), "b": np.array([0.0, 2.0, 1.0, 0.0])}


class FixedCosines(ScoreView):
    """The task vectors' cosines come from the test, not from weights on disk."""

    cos = None

    def cosines(self):
        return self.cos


def view(cos_unit1: float = 1.0) -> ScoreView:
    units = [UnitInfo(f"model.layers.{i}.mlp", i, "mlp", "mlp", 10) for i in range(4)]
    v = FixedCosines(units, ["a", "b"], dict(SCORES), "patch_in", {"a": True, "b": True}, {})
    cos = np.ones((4, 2, 2))
    cos[1, 0, 1] = cos[1, 1, 0] = cos_unit1
    v.cos = cos
    return v


def test_topk_owns_its_top_units_and_splits_shared_ones_by_score():
    w = get("topk")(view(), k=1, background=0.25)
    np.testing.assert_allclose(w, [[1.0, 0.25, 0.25, 0.25], [0.25, 1.0, 0.25, 0.25]])
    w = get("topk")(view(), k=2, background=0.0, scale=2.0)
    # unit 1 is in both top-2 lists: split 1:2 by score, its total stays `scale`
    np.testing.assert_allclose(w, [[2.0, 2 / 3, 0.0, 0.0], [0.0, 4 / 3, 2.0, 0.0]])


def test_topk_never_claims_a_unit_the_expert_scores_at_or_below_zero():
    w = get("topk")(view(), k=4, background=0.0)
    assert w[0, 2] == 0.0 and w[0, 3] == 0.0 and w[1, 0] == 0.0 and w[1, 3] == 0.0


@pytest.mark.parametrize("cos, expected_a", [(0.9, 1.0), (-0.5, 0.0)])
def test_conflict_keeps_agreeing_claimants_and_gives_a_disagreement_to_the_stronger(cos, expected_a):
    w = get("conflict")(view(cos_unit1=cos), k=2, background=0.0)
    assert w[1, 1] == 1.0  # b scores unit 1 higher: it keeps it either way
    assert w[0, 1] == expected_a  # a keeps it only while the task vectors agree
    np.testing.assert_allclose(w[:, [0, 2, 3]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_unknown_parameter_is_refused_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'k'|parameters: k"):
        get("topk")(view(), kk=2)
