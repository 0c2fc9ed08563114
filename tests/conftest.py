import pytest
import torch


@pytest.fixture
def one_thread():
    """Small networks run far faster on one thread than on contended cores; the setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
