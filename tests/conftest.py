"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared 2-core machine OpenMP barriers make 2 threads far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_image_decoding(monkeypatch):
    """Make any ``cv2.imread`` fail: for checks that a re-run over finished outputs decodes no image."""
    import cv2

    def refuse(*args, **kwargs):
        raise AssertionError("a re-run over finished outputs must not decode any image")

    monkeypatch.setattr(cv2, "imread", refuse)
