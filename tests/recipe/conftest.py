import pytest
from helpers import make_model, noisy_expert


@pytest.fixture(scope="session")
def deep_zoo(tmp_path_factory):
    """A 12-layer tiny llama (so layers.1 and layers.10 both exist) and two noisy experts."""
    d = tmp_path_factory.mktemp("deep")
    base = make_model("llama", d / "base", layers=12)
    a = noisy_expert(base, d / "a", seed=1)
    b = noisy_expert(base, d / "b", seed=2)
    return base, {"a": a, "b": b}
