"""Custom datasets from a YAML spec: checks of the spec and the data before anything is written, pairing,
splits, colour and id masks, and the raw -> prepare -> train -> eval -> predict workflow as a user runs it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datasets import get_dataset
from datasets.custom import SpecError, load_spec
from datasets.isprs import PotsdamDataset
from tools import ToolError
from tools.make_synthetic_data import make_synthetic
from tools.prepare_dataset import PrepareOptions, prepare

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TINY_MODEL = ["--arch", "pfnet_r50", "--maxpool_size", "2", "--avgpool_size", "2", "--edge_points", "8"]
CLASSES = [{"name": name, "color": list(colour)}
           for name, colour in zip(PotsdamDataset.class_names, PotsdamDataset.palette.tolist())]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Synthetic Potsdam raw tiles as someone's own data: top_potsdam_X_RGB.tif with top_potsdam_X_label.tif."""
    return make_synthetic("potsdam", tmp_path_factory.mktemp("custom") / "raw", seed=2, num_images=4, size=SIZE)


def _spec(folder: Path, raw: Path, **changes) -> Path:
    content = {"name": "toy", "images": str(raw / "2_Ortho_RGB"), "masks": str(raw / "5_Labels_all"),
               "image_suffix": "_RGB", "mask_suffix": "_label", "classes": CLASSES,
               "split_by": "fraction", "seed": 0, "splits": {"train": 0.75, "val": 0.25}}
    content.update(changes)
    content = {key: value for key, value in content.items() if value is not None}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _copy(raw: Path, target: Path) -> Path:
    shutil.copytree(raw, target)
    return target


def test_example_spec_in_the_repository_is_valid():
    spec = load_spec(REPO / "docs" / "examples" / "custom_dataset.yaml")
    assert spec.class_names[:2] == ("impervious_surfaces", "building") and spec.ignore == ((0, 0, 0),)
    assert spec.split_by == "fraction" and spec.patch_size == 512


def test_pairs_by_suffix_split_by_seeded_fraction_colour_masks_to_ids(raw, tmp_path):
    prepare("custom", None, tmp_path / "out", PrepareOptions(spec=_spec(tmp_path, raw), workers=1, progress=False))
    train = sorted(path.name for path in (tmp_path / "out" / "train" / "images").iterdir())
    val = sorted(path.name for path in (tmp_path / "out" / "val" / "images").iterdir())
    assert len(train) == 3 and len(val) == 1 and not set(train) & set(val)
    assert all(name.startswith("top_potsdam_") and not name.endswith("_RGB.png") for name in train + val)
    dataset = get_dataset("custom", "train", tmp_path / "out", spec=tmp_path / "spec.yaml")
    assert dataset.class_names == PotsdamDataset.class_names and dataset.num_classes == 6
    for image_path, mask_path in dataset.items:
        key = image_path.stem
        colours = cv2.imread(str(raw / "5_Labels_all" / f"{key}_label.tif"))[..., ::-1]
        expected = np.full(colours.shape[:2], 255, np.uint8)
        for class_id, colour in enumerate(PotsdamDataset.palette):
            expected[(colours == colour).all(-1)] = class_id
        assert (expected != 255).all()
        np.testing.assert_array_equal(cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED), expected)
    again = prepare("custom", None, tmp_path / "out",
                    PrepareOptions(spec=tmp_path / "spec.yaml", workers=1, progress=False))
    assert again.written == 0 and again.existing == 8, "a re-run resumes: nothing rewritten"
    prepare("custom", None, tmp_path / "same_seed",
            PrepareOptions(spec=tmp_path / "spec.yaml", workers=1, progress=False))
    assert sorted(path.name for path in (tmp_path / "same_seed" / "val" / "images").iterdir()) == val


def test_id_masks_folder_splits_list_splits_and_windows(raw, tmp_path):
    data = tmp_path / "data"
    for split, tiles in (("train", ("2_10", "2_11", "2_12")), ("val", ("2_13",))):
        for tile in tiles:
            (data / "images" / split).mkdir(parents=True, exist_ok=True)
            (data / "masks" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(raw / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", data / "images" / split / f"{tile}.tif")
            colours = cv2.imread(str(raw / "5_Labels_all" / f"top_potsdam_{tile}_label.tif"))[..., ::-1]
            values = np.zeros(colours.shape[:2], np.uint8)
            for class_id, colour in enumerate(PotsdamDataset.palette):
                values[(colours == colour).all(-1)] = 10 * class_id + 10      # class k is value 10k + 10
            values[:4, :4] = 0                                                # no-data, ignored
            cv2.imwrite(str(data / "masks" / split / f"{tile}.png"), values)
    id_classes = [{"name": item["name"], "id": 10 * index + 10} for index, item in enumerate(CLASSES)]
    spec = _spec(tmp_path, data, images=str(data / "images"), masks=str(data / "masks"), image_suffix=None,
                 mask_suffix=None, mask_format="ids", classes=id_classes, ignore=[0], split_by="folders",
                 splits={"train": "train", "val": "val"}, patch_size=32)
    prepare("custom", None, tmp_path / "out", PrepareOptions(spec=spec, workers=1, progress=False))
    window = cv2.imread(str(tmp_path / "out" / "val" / "masks" / "2_13_0_32_0_32_gray_mask.png"), cv2.IMREAD_UNCHANGED)
    source = cv2.imread(str(data / "masks" / "val" / "2_13.png"), cv2.IMREAD_UNCHANGED)[:32, :32]
    np.testing.assert_array_equal(window, np.where(source == 0, 255, source // 10 - 1))
    assert len(list((tmp_path / "out" / "train" / "images").iterdir())) == 3 * 4

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("2_10\n2_11.tif\n")
    (tmp_path / "lists" / "val.txt").write_text("# held out\n2_12\n")
    flat = _copy(data / "images" / "train", tmp_path / "flat_images")
    masks = _copy(data / "masks" / "train", tmp_path / "flat_masks")
    spec = _spec(tmp_path, data, images=str(flat), masks=str(masks), image_suffix=None, mask_suffix=None,
                 mask_format="ids", classes=id_classes, ignore=[0], split_by="lists",
                 splits={"train": "lists/train.txt", "val": "lists/val.txt"})
    prepare("custom", None, tmp_path / "listed", PrepareOptions(spec=spec, workers=1, progress=False))
    assert sorted(p.name for p in (tmp_path / "listed" / "train" / "images").iterdir()) == ["2_10.png", "2_11.png"]
    assert sorted(p.name for p in (tmp_path / "listed" / "val" / "images").iterdir()) == ["2_12.png"]


def _break_colour(raw: Path, tmp_path: Path) -> dict:
    broken = _copy(raw, tmp_path / "colour")
    label = broken / "5_Labels_all" / "top_potsdam_2_11_label.tif"
    colours = cv2.imread(str(label))
    colours[:3, :5] = (7, 8, 9)
    cv2.imwrite(str(label), colours)
    return {"images": str(broken / "2_Ortho_RGB"), "masks": str(broken / "5_Labels_all")}


def _break_size(raw: Path, tmp_path: Path) -> dict:
    broken = _copy(raw, tmp_path / "size")
    label = broken / "5_Labels_all" / "top_potsdam_2_10_label.tif"
    cv2.imwrite(str(label), cv2.imread(str(label))[:, :-2])
    return {"images": str(broken / "2_Ortho_RGB"), "masks": str(broken / "5_Labels_all")}


def _unpair(raw: Path, tmp_path: Path) -> dict:
    broken = _copy(raw, tmp_path / "unpaired")
    (broken / "5_Labels_all" / "top_potsdam_2_12_label.tif").unlink()
    return {"images": str(broken / "2_Ortho_RGB"), "masks": str(broken / "5_Labels_all")}


@pytest.mark.parametrize("change,message", [
    (lambda raw, tmp: {"images": str(tmp / "nowhere")}, r"spec.yaml: images: folder .*nowhere does not exist"),
    (_unpair, r"spec.yaml: masks: 1 of 4 images have no mask: top_potsdam_2_12_RGB.tif \(expected "
              r"top_potsdam_2_12_label\.\* in .*\); add the masks, or fix mask_suffix"),
    (_break_colour, r"top_potsdam_2_11_label.tif: 15 of 4096 pixels have colours outside the palette: "
                    r"RGB\(9, 8, 7\) x 15. Fix the mask, or choose --unknown-color"),
    (lambda raw, tmp: {"classes": CLASSES[:2] + [{"name": "roof", "color": CLASSES[1]["color"]}]},
     r"spec.yaml: classes\[2\].color: 'roof' has the same color \[0, 0, 255\] as classes\[1\]; give each class"),
    (_break_size, r"top_potsdam_2_10_label.tif: mask is 62x64 \(WxH\) but its image .* is 64x64; they must match"),
    (lambda raw, tmp: {"splits": {"train": 0.9, "val": 0.1}},
     r"spec.yaml: splits.val: no image falls into this split; give it images"),
    (lambda raw, tmp: {"classes": CLASSES, "ignore": [[0, 0, 255]]},
     r"spec.yaml: ignore\[0\]: \[0, 0, 255\] is also the code of class 'building'"),
    (lambda raw, tmp: {"split_by": "random"}, r"spec.yaml: split_by: 'random' is not one of"),
    (lambda raw, tmp: {"colour_masks": True}, r"spec.yaml: colour_masks: unknown key; the keys are"),
])
def test_bad_input_is_named_with_its_fix_before_anything_is_written(raw, tmp_path, change, message):
    spec = _spec(tmp_path, raw, **change(raw, tmp_path))
    with pytest.raises((ToolError, SpecError), match=message):
        prepare("custom", None, tmp_path / "out", PrepareOptions(spec=spec, workers=1, progress=False))
    assert not (tmp_path / "out").exists()


def _run(args: list[str], cwd: Path, code: int = 0) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == code, completed.stderr[-3000:]
    return completed


def test_command_line_errors_name_the_missing_spec(tmp_path):
    missing = _run([str(REPO / "tools" / "prepare_dataset.py"), "custom", "--out", str(tmp_path / "out")], tmp_path,
                   code=1)
    assert "custom needs --spec FILE" in missing.stderr and "Traceback" not in missing.stderr
    wrong = _run([str(REPO / "train.py"), "--dataset", "custom", "--device", "cpu"], tmp_path, code=2)
    assert "--dataset custom needs --dataset_spec FILE" in wrong.stderr and "Traceback" not in wrong.stderr


def test_eval_commands_for_custom_sets_in_the_docs_are_the_fast_ones():
    import eval as evaluation

    text = (REPO / "docs" / "data_custom.md").read_text().replace("\\\n", " ")
    commands = [line.split("eval.py", 1)[1].split() for line in text.splitlines()
                if ".venv/bin/python eval.py" in line]
    assert commands
    for flags in commands:
        args = evaluation.build_parser().parse_args(flags)
        assert (args.inference_mode, args.single_scale, args.flip, args.vflip, args.rot90) == (
            "whole", True, False, False, False), flags


@pytest.mark.workflow
def test_workflow_raw_prepare_train_eval_predict(raw, tmp_path):
    spec = _spec(tmp_path, raw, name="my_tiles")
    data = tmp_path / "prepared"
    _run([str(REPO / "tools" / "prepare_dataset.py"), "custom", "--spec", str(spec), "--out", str(data),
          "--workers", "1"], tmp_path)
    _run([str(REPO / "train.py"), "--dataset", "custom", "--dataset_spec", str(spec), "--set",
          f"DATASET.CUSTOM_DIR={data}", *TINY_MODEL, "--crop_size", str(SIZE), "--max_epoch", "1", "--bs_mult", "3",
          "--num_workers", "0", "--device", "cpu", "--ckpt", str(tmp_path / "ckpt"), "--tb_path",
          str(tmp_path / "tb"), "--exp", "tiny"], tmp_path)
    checkpoint = tmp_path / "ckpt" / "tiny" / "custom-pfnet_r50" / "last.pth"
    _run([str(REPO / "eval.py"), "--dataset", "custom", "--dataset_spec", str(spec), "--dataset_dir", str(data),
          "--snapshot", str(checkpoint), *TINY_MODEL, "--inference_mode", "whole", "--single_scale", "--no_flip",
          "--num_workers", "0", "--device", "cpu", "--out_dir", str(tmp_path / "eval"), "--report_samples", "1",
          "--dump_images"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["images"] == 1
    assert [row["name"] for row in metrics["classes"]] == list(PotsdamDataset.class_names)
    # no --dataset, no spec: the checkpoint carries the class names and the spec's palette
    image = raw / "2_Ortho_RGB" / "top_potsdam_2_13_RGB.tif"
    _run([str(REPO / "predict.py"), str(image), "--snapshot", str(checkpoint), "--out_dir", str(tmp_path / "pred"),
          "--format", "png", *TINY_MODEL, "--window", str(SIZE), "--device", "cpu"], tmp_path)
    with Image.open(tmp_path / "pred" / "top_potsdam_2_13_RGB_pred.png") as mask:
        assert mask.size == (SIZE, SIZE)
        palette = np.asarray(mask.getpalette()[: 6 * 3]).reshape(6, 3)
    np.testing.assert_array_equal(palette, [item["color"] for item in CLASSES])


@pytest.mark.workflow
def test_export_of_a_custom_dataset_checkpoint_needs_no_dataset_flag(raw, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is in requirements.txt")
    import network
    from datasets import dataset_class
    from utils.checkpoint import checkpoint_class_table

    classes = [{"name": name, "color": colour} for name, colour in
               (("road", [128, 64, 128]), ("roof", [70, 70, 70]), ("lawn", [107, 142, 35]))]
    spec = _spec(tmp_path, raw, name="my_tiles", classes=classes)
    # a checkpoint as train.py writes it for --dataset custom: DataParallel prefixes, the run's configuration,
    # the spec's class names and palette
    model = network.get_model("upernet_r18", len(classes), pretrained=None)
    checkpoint = tmp_path / "last.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in model.state_dict().items()}, "epoch": 0,
                "config": {"dataset": "custom", "dataset_spec": str(spec), "arch": "upernet_r18"},
                **checkpoint_class_table(dataset_class("custom", spec))}, checkpoint)
    (tmp_path / "six").mkdir()
    six_classes = _spec(tmp_path / "six", raw)  # --dataset_spec is read, and its 6 classes checked
    mismatch = _run([str(REPO / "tools" / "export_onnx.py"), "--snapshot", str(checkpoint), "--out",
                     str(tmp_path / "m.onnx"), "--dataset", "custom", "--dataset_spec", str(six_classes)],
                    tmp_path, code=2)
    assert "trained for 3 classes but 6 are expected" in mismatch.stderr and "Traceback" not in mismatch.stderr
    spec.unlink()  # the checkpoint alone says what its classes are
    from tools import export_onnx

    # the same command line through the tool's main, in this process (the refusal above is the process's)
    assert export_onnx.main(["--snapshot", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 0
    metadata = {entry.key: entry.value for entry in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(metadata["class_names"]) == ["road", "roof", "lawn"]
    assert json.loads(metadata["palette"]) == [item["color"] for item in classes]
    assert metadata["arch"] == "upernet_r18" and metadata["num_classes"] == "3"


def test_sixteen_bit_four_band_geotiffs_use_the_band_choice_and_one_saved_scaling(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    raw_pixels = {}
    for index, offset in enumerate((0, 3000)):
        pixels = (rng.integers(100, 5000, size=(4, 32, 32)) + offset).astype(np.uint16)
        raw_pixels[f"t{index}"] = pixels
        with rasterio.open(tmp_path / "img" / f"t{index}.tif", "w", driver="GTiff", width=32, height=32, count=4,
                           dtype="uint16", crs="EPSG:32633",
                           transform=rasterio.Affine(0.5, 0, 500000, 0, -0.5, 5800000)) as handle:
            handle.write(pixels)
        cv2.imwrite(str(tmp_path / "lab" / f"t{index}.png"), (pixels[0] > 2500).astype(np.uint8))
    classes = [{"name": "ground", "id": 0}, {"name": "bright", "id": 1}]
    spec = _spec(tmp_path, tmp_path, images=str(tmp_path / "img"), masks=str(tmp_path / "lab"), image_suffix=None,
                 mask_suffix=None, mask_format="ids", classes=classes, split_by="lists",
                 splits={"train": "train.txt", "val": "val.txt"}, bands=[4, 1, 2])
    (tmp_path / "train.txt").write_text("t0\n")
    (tmp_path / "val.txt").write_text("t1\n")
    prepare("custom", None, tmp_path / "out", PrepareOptions(spec=spec, workers=1, progress=False))
    saved = json.loads((tmp_path / "out" / "scaling.json").read_text())
    chosen = raw_pixels["t0"][[3, 0, 1]].transpose(1, 2, 0).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(saved["low"], np.percentile(chosen, 2, axis=0), rtol=1e-6)
    np.testing.assert_allclose(saved["high"], np.percentile(chosen, 98, axis=0), rtol=1e-6)
    val = raw_pixels["t1"][[3, 0, 1]].transpose(1, 2, 0).astype(np.float64)
    low, high = np.asarray(saved["low"]), np.asarray(saved["high"])
    expected = np.rint(np.clip((val - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    written = cv2.imread(str(tmp_path / "out" / "val" / "images" / "t1.png"))[..., ::-1]
    np.testing.assert_array_equal(written, expected)
    assert (written == 255).mean() > 0.3, "the val tile is brighter: the training range saturates it, not its own"
    prepare("custom", None, tmp_path / "rgb", PrepareOptions(spec=spec, bands="1,2,3", workers=1, progress=False))
    first_three = raw_pixels["t0"][:3].transpose(1, 2, 0).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(json.loads((tmp_path / "rgb" / "scaling.json").read_text())["low"],
                               np.percentile(first_three, 2, axis=0), rtol=1e-6)
