"""One torch thread for the pairs tests: the U2I model is small, and on 2 shared cores a second
thread spins against other jobs (measured: 85 ms vs 450 ms per training step under load)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
