import pytest
import torch


@pytest.fixture(scope='session', autouse=True)
def one_thread():
    """One thread: on a shared 2-core machine a second OpenMP thread can slow small networks
    tens of times, and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
