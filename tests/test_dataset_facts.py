"""Dataset facts declared once on the dataset classes, and everything that derives from them."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import config
import eval as eval_cli
import train
from datasets import DatasetNotFoundError
from datasets.base import TRAIN_PIPELINES, SegmentationFolder
from datasets.registry import DATASET_CLASSES, DATASET_NAMES, DATASETS, _registered_classes, dataset_class, names_text
from tools import make_synthetic_data, prepare_dataset

REPO = Path(__file__).resolve().parents[1]


def test_every_dataset_declares_its_facts():
    assert {cls.name for cls in DATASET_CLASSES} == {"iSAID", "Potsdam", "Vaihingen", "LoveDA", "custom"}
    for cls in DATASET_CLASSES:
        for fact in ("aliases", "root_key", "default_root", "splits", "val_split", "prepare_name", "mask_suffix",
                     "patch_size", "patch_stride", "train_pipeline"):
            assert hasattr(cls, fact), f"{cls.__name__} lacks {fact}"
        assert cls.val_split in cls.splits and cls.train_pipeline in TRAIN_PIPELINES
        if cls.name != "custom":
            assert cls.num_classes == len(cls.class_names) and cls.palette.shape == (cls.num_classes, 3)
            assert cls.palette.dtype == np.uint8 and len({tuple(c) for c in cls.palette.tolist()}) == cls.num_classes
    assert DATASET_NAMES == ("iSAID", "Posdam", "Potsdam", "potsdam", "Vaihingen", "LoveDA", "custom")
    assert names_text() == "iSAID, Posdam (or Potsdam, potsdam), Vaihingen, LoveDA, custom"


def test_config_roots_and_validation_splits_come_from_the_classes():
    defaults = config.get_cfg()
    assert {key: defaults.DATASET[key] for key in ("ISAID_DIR", "POSDAM_DIR", "VAIHINGEN_DIR", "LOVEDA_DIR")} == {
        "ISAID_DIR": "./data/iSAID", "POSDAM_DIR": "./data/posdam896", "VAIHINGEN_DIR": "./data/vaihingen768",
        "LOVEDA_DIR": "./data/LoveDA"}
    expected_roots = {"iSAID": "./data/iSAID", "isaid": "./data/iSAID", "Posdam": "./data/posdam896",
                      "Potsdam": "./data/posdam896", "potsdam": "./data/posdam896",
                      "Vaihingen": "./data/vaihingen768", "LoveDA": "./data/LoveDA", "loveda": "./data/LoveDA"}
    assert {alias: config.dataset_root(defaults, alias) for alias in expected_roots} == expected_roots
    assert [DATASETS[name].val_split for name in ("isaid", "posdam", "potsdam", "vaihingen", "loveda")] == [
        "val", "test", "test", "test", "val"]
    with pytest.raises(KeyError, match="known: iSAID, Posdam"):
        config.dataset_root(defaults, "cityscapes")
    with pytest.raises(ValueError, match="--dataset custom needs --dataset_spec"):
        dataset_class("custom")


def test_tools_and_help_texts_list_every_dataset():
    assert prepare_dataset.DATASETS == ("isaid", "potsdam", "vaihingen", "loveda", "custom")
    assert set(make_synthetic_data.DATASETS) == set(prepare_dataset.DATASETS) - {"custom"}
    train_help = train.build_parser().format_help()
    assert "LoveDA" in train_help and "test for Potsdam, Vaihingen" in " ".join(train_help.split())
    assert "LoveDA" in " ".join(eval_cli.build_parser().format_help().split())


def test_a_new_subclass_with_aliases_is_found_by_the_registry():
    class ToyDataset(SegmentationFolder):
        name = "Toy"
        aliases = ("toy",)

    class _Intermediate(SegmentationFolder):
        num_classes = 2

    found = _registered_classes()
    assert ToyDataset in found and _Intermediate not in found


def test_eval_defaults_to_the_datasets_own_validation_split(tmp_path):
    """Potsdam was validated on test: eval.py --dataset Posdam without --split looks there, not in val."""
    args, run_config = config.parse_with_config(eval_cli.build_parser(), [
        "--dataset", "Posdam", "--dataset_dir", str(tmp_path), "--snapshot", "x.pth", "--arch", "pfnet_r50"])
    with pytest.raises(DatasetNotFoundError, match=r"test/images does not exist"):
        eval_cli.evaluate(args, run_config)
    assert args.split == "test"


def test_the_data_tools_import_no_torch():
    code = ("import sys; import tools.prepare_dataset, tools.make_synthetic_data, datasets.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
