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


def test_share_splits_each_unit_by_positive_score_and_mix_interpolates_to_uniform():
    share = get("share")(view(), scale=2.0)
    # unit 0: a only (3 vs 0); unit 1: 1 vs 2; unit 2: b only; unit 3: nobody above 0 -> even split
    np.testing.assert_allclose(share, 2.0 * np.array([[1.0, 1 / 3, 0.0, 0.5], [0.0, 2 / 3, 1.0, 0.5]]))
    mix = get("mix")(view(), scale=2.0, alpha=0.25)
    np.testing.assert_allclose(mix, 0.75 * 2.0 + 0.25 * share)
    np.testing.assert_allclose(get("mix")(view(), alpha=0.0), np.ones((2, 4)))  # alpha 0: task arithmetic


def test_calibration_scorer_reads_zero_on_the_base_and_one_on_the_expert(scored_pair):
    """The measure calibration ranks candidates by, at its two ends."""
    import json

    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.recipe.calibrate import ProbeScorer

    d, scores = scored_pair
    data = json.loads(scores.read_text())
    scorer = ProbeScorer(data, ["a"], "cpu")
    base = scorer.measure()["a"]
    assert abs(base["recovery"]) < 1e-6
    a = Checkpoint.open(data["experts"]["a"]["model"])
    scorer.load({n: a.get(n) for n in a.tensors})
    expert = scorer.measure()["a"]
    assert expert["recovery"] == pytest.approx(1.0, abs=1e-6)
    assert expert["token_accuracy"] > base["token_accuracy"]  # the planted expert learned its probes
    assert expert["sequence_accuracy"] >= base["sequence_accuracy"]
