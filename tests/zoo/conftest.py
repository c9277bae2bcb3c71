import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the zoo build uses: for models this small more threads only
    add OpenMP overhead, which grows tenfold and more when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
