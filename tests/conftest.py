import os
from pathlib import Path

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


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    """Run a test on the CPU, and again on the GPU where there is one (skipped otherwise)."""
    if request.param == 'cuda' and not torch.cuda.is_available():
        pytest.skip('no CUDA device')
    return torch.device(request.param)


def parity_fixture_path():
    """The authors' tiny networks with their outputs (tests/fixtures/README.md). The 1 MB copy in git
    holds the two discriminators; the full 4 MB file, with the generator, can be named by
    $RGM_PARITY_FIXTURE (the generator's parity test skips without it)."""
    path = Path(os.environ.get('RGM_PARITY_FIXTURE', Path(__file__).parent / 'fixtures' / 'authors_parity_tiny.pt'))
    if not path.is_file():
        pytest.skip(f'{path} is absent (tests/fixtures/README.md)')
    return path


def generator_parity():
    """The parity data with the authors' tiny generator (the full file only), or skip."""
    import torch
    fixture = torch.load(parity_fixture_path(), weights_only=True)
    if 'G_state_dict' not in fixture:
        pytest.skip('the generator part of the parity data is in the full 4 MB file ($RGM_PARITY_FIXTURE)')
    return fixture
