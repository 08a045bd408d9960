"""The recipes: configs/pointflow/*.yaml (training) and configs/pointflow/test/*.yaml (evaluation protocols), their
launchers scripts/train.sh and scripts/test.sh, and the original's script names that wrap them."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import config
import eval as evaluation
import train

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "pointflow"
PROTOCOLS = RECIPES / "test"

# The recipe of the original's scripts as it ran (/work/shared/reference/NOTES.md, "Official scripts"), written out
# here rather than read from the code: 8 GPUs x --bs_mult 2, SyncBN, poly LR (exponent 0.9), point flow 14 / 9 /
# 128 / 64, PFNet's joint edge loss with weight 25, OHEM, float32, plain shuffled patches.
COMMON = dict(bs_mult=2, syncbn=True, lr_schedule="poly", poly_exp=0.9, maxpool_size=14, avgpool_size=9,
              edge_points=128, match_dim=64, joint_edge_loss_pfnet=True, edge_weight=25.0, ohem=True, amp="off",
              class_uniform_pct=0.0, class_uniform_sampling=False, momentum=0.9, weight_decay=1e-4)
NO_AUG = dict(with_aug=False, scale_min=1.0, scale_max=1.0)
AUG = dict(with_aug=True, scale_min=0.5, scale_max=2.0)
EXPECTED = {
    "isaid_r50": dict(dataset="iSAID", arch="pfnet_r50", lr=0.007, max_epoch=16, crop_size=896, **NO_AUG,
                      pretrained="./pretrained_models/resnet50-deep.pth", exp="r50", ckpt="./iSAID"),
    "isaid_r101": dict(dataset="iSAID", arch="pfnet_r101", lr=0.007, max_epoch=16, crop_size=896, **NO_AUG,
                       pretrained="./pretrained_models/resnet101-deep.pth", exp="r101", ckpt="./iSAID"),
    "potsdam_r50": dict(dataset="Posdam", arch="pfnet_r50", lr=0.01, max_epoch=100, crop_size=896, **AUG,
                        pretrained="./pretrained_models/resnet50-deep.pth", exp="r50", ckpt="./posdam"),
    "vaihingen_r50": dict(dataset="Vaihingen", arch="pfnet_r50", lr=0.01, max_epoch=200, crop_size=768, **AUG,
                          pretrained="./pretrained_models/resnet50-deep.pth", exp="r50", ckpt="./vaihingen"),
    # Not the original's: its Potsdam recipe with the LoveDA paper's 512 crops over 100 epochs.
    "loveda_r50": dict(dataset="LoveDA", arch="pfnet_r50", lr=0.01, max_epoch=100, crop_size=512, **AUG,
                       pretrained="./pretrained_models/resnet50-deep.pth", exp="r50", ckpt="./loveda"),
}
# The original's script names, each a wrapper of scripts/train.sh with its recipe.
WRAPPERS = {"train_iSAID_pfnet_r50.sh": "isaid_r50", "train_iSAID_pfnet_r101.sh": "isaid_r101",
            "train_posdam896_pfnet_r50.sh": "potsdam_r50", "train_vaihingen768_pfnet_r50.sh": "vaihingen_r50",
            "train_loveda_pfnet_r50.sh": "loveda_r50"}


# The original's test scripts (NOTES.md): whole image, single scale, no flip, resized to 896 (768 for Vaihingen);
# iSAID scored on val, Potsdam and Vaihingen on test; point flow as trained. LoveDA: val, whole 1024 x 1024 images.
PROTOCOL = dict(inference_mode="whole", single_scale=True, flip=False, maxpool_size=14, avgpool_size=9,
                edge_points=128, match_dim=64)
EXPECTED_PROTOCOLS = {
    "isaid_r50": dict(dataset="iSAID", split="val", resize_scale=896, arch="pfnet_r50"),
    "isaid_r101": dict(dataset="iSAID", split="val", resize_scale=896, arch="pfnet_r101"),
    "potsdam_r50": dict(dataset="Posdam", split="test", resize_scale=896, arch="pfnet_r50"),
    "vaihingen_r50": dict(dataset="Vaihingen", split="test", resize_scale=768, arch="pfnet_r50"),
    "loveda_r50": dict(dataset="LoveDA", split="val", resize_scale=None, arch="pfnet_r50"),
}
TEST_WRAPPERS = {"test_iSAID_pfnet_R50.sh": "isaid_r50", "test_iSAID_pfnet_R101.sh": "isaid_r101",
                 "test_posdam896_pfnet_r50.sh": "potsdam_r50", "test_vaihingen768_pfnet_r50.sh": "vaihingen_r50",
                 "test_loveda_pfnet_r50.sh": "loveda_r50"}


def test_every_recipe_and_protocol_is_checked():
    assert sorted(path.stem for path in RECIPES.glob("*.yaml")) == sorted(EXPECTED)
    assert sorted(path.stem for path in PROTOCOLS.glob("*.yaml")) == sorted(EXPECTED_PROTOCOLS)
    assert sorted(path.name for path in (REPO / "scripts" / "pointflow").glob("train_*.sh")) == sorted(WRAPPERS)
    assert sorted(path.name for path in (REPO / "scripts" / "pointflow" / "test").glob("*.sh")) == sorted(TEST_WRAPPERS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_parses_to_the_published_recipe(name):
    args, _, notes = train.parse_args(["--config", str(RECIPES / f"{name}.yaml")])
    expected = {**COMMON, **EXPECTED[name], "tb_path": EXPECTED[name]["ckpt"]}
    assert {key: getattr(args, key) for key in expected} == expected
    assert notes == []  # none of the original's no-op flags (--cv 0, --sgd, --apex, ...) is passed


# The original's training command lines (NOTES.md, "Official scripts"), with the registry's model names for its
# dotted ones and today's --pretrained and output folders; LoveDA's is the script this project shipped before.
ORIGINAL_COMMON = ("--cv 0 --class_uniform_pct 0.5 --class_uniform_tile 1024 --lr_schedule poly --poly_exp 0.9 "
                   "--repoly 1.5 --rescale 1.0 --syncbn --sgd --aux --maxpool_size 14 --avgpool_size 9 "
                   "--edge_points 128 --match_dim 64 --joint_edge_loss_pfnet --edge_weight 25.0 --ohem --wt_bound 1.0 "
                   "--apex --bs_mult 2 --pretrained ./pretrained_models/{trunk}-deep.pth --exp {exp} --ckpt {out} "
                   "--tb_path {out}")
ORIGINAL_FLAGS = {
    "isaid_r50": "--dataset iSAID --arch pfnet_r50 --lr 0.007 --max_epoch 16 --max_cu_epoch 16 --crop_size 896",
    "isaid_r101": "--dataset iSAID --arch pfnet_r101 --lr 0.007 --max_epoch 16 --max_cu_epoch 16 --crop_size 896",
    "potsdam_r50": ("--dataset Posdam --arch pfnet_r50 --lr 0.01 --max_epoch 100 --max_cu_epoch 100 --crop_size 896 "
                    "--scale_min 0.5 --scale_max 2.0 --with_aug"),
    "vaihingen_r50": ("--dataset Vaihingen --arch pfnet_r50 --lr 0.01 --max_epoch 200 --max_cu_epoch 200 "
                      "--crop_size 768 --scale_min 0.5 --scale_max 2.0 --with_aug"),
    "loveda_r50": ("--dataset LoveDA --arch pfnet_r50 --lr 0.01 --max_epoch 100 --crop_size 512 --scale_min 0.5 "
                   "--scale_max 2.0 --with_aug"),
}
# What the original's no-op flags change in the parsed options (they act nowhere: docs/training.md).
NO_OP = {"class_uniform_pct", "max_cu_epoch", "aux", "apex"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_parses_as_the_original_command_line(name):
    recipe, recipe_config, _ = train.parse_args(["--config", str(RECIPES / f"{name}.yaml")])
    trunk = "resnet101" if name.endswith("r101") else "resnet50"
    flags = f"{ORIGINAL_FLAGS[name]} {ORIGINAL_COMMON}".format(trunk=trunk, exp=EXPECTED[name]["exp"],
                                                                out=EXPECTED[name]["ckpt"])
    original, original_config, _ = train.parse_args(flags.split())
    differing = {key for key in vars(original) if getattr(original, key) != getattr(recipe, key)}
    assert differing <= NO_OP | {"config"}
    assert recipe_config == original_config


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_diffs_directly_with_the_config_yaml_of_its_run(name):
    """Each value line of the recipe, without its comment, is a line of the config.yaml that a run of the recipe
    writes, in the same order: ``diff`` shows only the defaults the run adds. Every value has a comment."""
    text = (RECIPES / f"{name}.yaml").read_text()
    value_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(" # " in line for line in value_lines)
    recipe_lines = [line.split(" #", 1)[0].rstrip() for line in value_lines]
    args, run_config, _ = train.parse_args(["--config", str(RECIPES / f"{name}.yaml")])
    written = yaml.safe_dump(train.effective_config(train.flag_values(args), run_config), sort_keys=False)
    remaining = iter(written.splitlines())
    missing = [line for line in recipe_lines if line not in remaining]  # consumes: order matters
    assert missing == []


def test_a_value_of_the_recipe_can_be_cleared_with_set_null():
    args, _, _ = train.parse_args(["--config", str(RECIPES / "isaid_r50.yaml"), "--set", "pretrained=null"])
    assert args.pretrained is None


def fake_python(tmp_path: Path) -> Path:
    """An executable that writes its arguments, one a line, to ``tmp_path/argv`` instead of running Python."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    script.chmod(0o755)
    return script


def launch(tmp_path: Path, command: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run a launcher script with the fake Python from a folder outside the repository."""
    environment = {key: value for key, value in os.environ.items() if key not in ("GPUS", "NNODES", "RDZV_ENDPOINT")}
    environment.update(PYTHON=str(fake_python(tmp_path)), **env)
    return subprocess.run(["bash", *command], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("script", sorted(WRAPPERS))
def test_original_script_name_launches_its_recipe_under_torchrun(tmp_path, script):
    completed = launch(tmp_path, [str(REPO / "scripts" / "pointflow" / script), "--amp", "bf16"], GPUS="4")
    assert completed.returncode == 0, completed.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:4] == ["-m", "engine.launch", "--standalone", "--nproc_per_node=4"]
    assert Path(argv[4]).resolve() == REPO / "train.py" and argv[5] == "--config"
    assert Path(argv[6]).resolve() == RECIPES / f"{WRAPPERS[script]}.yaml"
    assert argv[7:] == ["--amp", "bf16"]
    assert len((REPO / "scripts" / "pointflow" / script).read_text().splitlines()) == 3


def test_launcher_takes_gpus_and_nodes(tmp_path):
    recipe = str(RECIPES / "potsdam_r50.yaml")
    assert launch(tmp_path, [str(REPO / "scripts" / "train.sh"), recipe]).returncode == 0
    assert "--nproc_per_node=8" in (tmp_path / "argv").read_text().splitlines()  # the paper's 8 GPUs
    completed = launch(tmp_path, [str(REPO / "scripts" / "train.sh"), recipe, "2", "--bs_mult", "4"],
                       NNODES="2", RDZV_ENDPOINT="node0:29500")
    assert completed.returncode == 0, completed.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[2:7] == ["--nnodes=2", "--rdzv_backend=c10d", "--rdzv_id=pfnet", "--rdzv_endpoint=node0:29500",
                         "--nproc_per_node=2"]
    assert argv[-3:] == [recipe, "--bs_mult", "4"]


@pytest.mark.parametrize(("arguments", "env", "message"), [
    ([], {}, "usage: bash"),
    (["no_such.yaml"], {}, "CONFIG is a YAML experiment file"),
    ([str(RECIPES / "isaid_r50.yaml")], {"NNODES": "2"}, "set RDZV_ENDPOINT=host:port of the first node"),
])
def test_launcher_refuses_a_missing_config_or_endpoint(tmp_path, arguments, env, message):
    completed = launch(tmp_path, [str(REPO / "scripts" / "train.sh"), *arguments], **env)
    assert completed.returncode == 2 and message in completed.stderr
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize("script", sorted(TEST_WRAPPERS))
def test_original_test_script_evaluates_with_its_protocol(tmp_path, script):
    """The original's command line (CHECKPOINT OUTPUT_ROOT [flags]) reaches eval.py with the protocol file, and
    eval.py reads it as the original's test script meant it."""
    completed = launch(tmp_path, [str(REPO / "scripts" / "pointflow" / "test" / script), "ckpt.pth", "out",
                                  "--device", "cpu"])
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["Running inference on ckpt.pth", "Saving Results : out"]
    argv = (tmp_path / "argv").read_text().splitlines()
    assert Path(argv[0]).resolve() == REPO / "eval.py" and argv[1] == "--config"
    assert Path(argv[2]).resolve() == PROTOCOLS / f"{TEST_WRAPPERS[script]}.yaml"
    assert argv[3:] == ["--ckpt_path", "out", "--snapshot", "ckpt.pth", "--device", "cpu"]
    args, _ = config.parse_with_config(evaluation.build_parser(), argv[1:])
    expected = {**PROTOCOL, **EXPECTED_PROTOCOLS[TEST_WRAPPERS[script]], "snapshot": "ckpt.pth", "ckpt_path": "out"}
    assert {key: getattr(args, key) for key in expected} == expected
    assert len((REPO / "scripts" / "pointflow" / "test" / script).read_text().splitlines()) == 3


def test_original_test_script_without_its_two_arguments_is_a_usage_error(tmp_path):
    completed = launch(tmp_path, [str(REPO / "scripts" / "pointflow" / "test" / "test_iSAID_pfnet_R50.sh"), "ckpt"])
    assert completed.returncode == 2 and "usage: sh" in completed.stderr
    assert not (tmp_path / "argv").exists()


def test_protocol_file_gives_eval_py_its_required_dataset():
    args, _ = config.parse_with_config(evaluation.build_parser(),
                                       ["--config", str(PROTOCOLS / "vaihingen_r50.yaml"), "--snapshot", "x.pth"])
    assert args.dataset == "Vaihingen"
    args, _ = config.parse_with_config(evaluation.build_parser(), ["--config", str(PROTOCOLS / "vaihingen_r50.yaml"),
                                                                   "--dataset", "iSAID", "--snapshot", "x.pth"])
    assert args.dataset == "iSAID"  # the command line wins
