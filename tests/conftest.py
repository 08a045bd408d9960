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


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory):
    """Raw synthetic Potsdam GeoTIFF tiles and their prepared patches, shared by the trained reference models."""
    from trained_models import make_reference_data

    base = tmp_path_factory.mktemp("reference")
    raw, root = make_reference_data(base)
    return base, raw, root


@pytest.fixture(scope="session")
def trained_pfnet(reference_data):
    """PFNet-R50 (pools 4 / 4, 16 edge points) trained two epochs by train.py: a ``TrainedModel``."""
    from trained_models import PFNET_OPTIONS, train_potsdam

    return train_potsdam(*reference_data, "pfnet_r50", PFNET_OPTIONS)


@pytest.fixture(scope="session")
def trained_upernet(reference_data):
    """UperNet-R18 trained two epochs by train.py (a baseline of another family): a ``TrainedModel``."""
    from trained_models import train_potsdam

    return train_potsdam(*reference_data, "upernet_r18")


@pytest.fixture(scope="session")
def trained_custom(reference_data):
    """PFNet-R50 trained two epochs by train.py on a custom dataset with class names of its own."""
    from trained_models import train_custom

    base, raw, _ = reference_data
    return train_custom(base, raw)
