"""Fixtures shared by several test modules.

The expensive ones (the trained reference models, the tiny prepared dataset) are built once per test run,
also when pytest-xdist runs the suite in several worker processes (``make test``: ``-n 2``): the first worker
that needs one builds it under a file lock in the folder every worker shares, the others read the result.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, TypeVar

import pytest
import torch
from filelock import FileLock

Built = TypeVar("Built")


def pytest_configure(config):
    """One intra-op thread in each pytest-xdist worker: the workers already share the cores between them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def build_once(tmp_path_factory, name: str, build: Callable[[Path], Built]) -> Built:
    """``build(folder)`` once per test run, shared by every pytest-xdist worker; its result (picklable) is
    returned to each caller. Callers must treat the folder as read-only (copy it to change anything).

    Args:
        tmp_path_factory: pytest's session factory (its base folder is per worker; the parent is the run's).
        name: the folder's name under the shared base folder, unique per fixture.
        build: writes into the (new) folder it is given and returns what the fixture yields.

    Returns:
        What ``build`` returned, in this or another worker.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    result_file = shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if result_file.exists():
            return pickle.loads(result_file.read_bytes())
        folder = shared / name
        folder.mkdir()
        built = build(folder)
        result_file.write_bytes(pickle.dumps(built))
        return built


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
def tiny_potsdam(tmp_path_factory) -> Path:
    """The tiny prepared Potsdam root of tests/train_data.py (read-only: copy it to damage or extend it)."""
    from train_data import make_tiny_potsdam

    return build_once(tmp_path_factory, "tiny_potsdam", make_tiny_potsdam)


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory):
    """Raw synthetic Potsdam GeoTIFF tiles and their prepared patches, shared by the trained reference models."""
    from trained_models import make_reference_data

    def build(base: Path):
        raw, root = make_reference_data(base)
        return base, raw, root

    return build_once(tmp_path_factory, "reference", build)


@pytest.fixture(scope="session")
def trained_pfnet(tmp_path_factory, reference_data):
    """PFNet-R50 (pools 4 / 4, 16 edge points) trained two epochs by train.py: a ``TrainedModel``."""
    from trained_models import PFNET_OPTIONS, train_potsdam

    return build_once(tmp_path_factory, "trained_pfnet",
                      lambda _: train_potsdam(*reference_data, "pfnet_r50", PFNET_OPTIONS))


@pytest.fixture(scope="session")
def trained_upernet(tmp_path_factory, reference_data):
    """UperNet-R18 trained two epochs by train.py (a baseline of another family): a ``TrainedModel``."""
    from trained_models import train_potsdam

    return build_once(tmp_path_factory, "trained_upernet", lambda _: train_potsdam(*reference_data, "upernet_r18"))


@pytest.fixture(scope="session")
def trained_custom(tmp_path_factory, reference_data):
    """PFNet-R50 trained two epochs by train.py on a custom dataset with class names of its own."""
    from trained_models import train_custom

    base, raw, _ = reference_data
    return build_once(tmp_path_factory, "trained_custom", lambda _: train_custom(base, raw))
