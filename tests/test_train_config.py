"""train.py flags, YAML experiment files and dotted overrides (the shipped recipes: test_recipes.py)."""
import re

import pytest
import yaml
from train_data import RUN_CONTROL_KEYS

import config
import eval as evaluation
import train


def test_precedence_defaults_file_flags_overrides(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("lr: 0.05\nmax_epoch: 7\nohem: true\nDATASET:\n  ISAID_DIR: /from/file\n")
    args, run_config, _ = train.parse_args(["--config", str(experiment), "--max_epoch", "9", "--set", "poly_exp=0.9",
                                "DATASET.VAIHINGEN_DIR=/from/set", "--set", "weight_decay=1e-3", "syncbn=true"])
    assert args.lr == 0.05  # file over default
    assert args.max_epoch == 9  # command line over file
    assert args.ohem is True
    assert args.poly_exp == 0.9  # --set
    assert args.weight_decay == 0.001 and args.syncbn is True  # typed as the flag ("1e-3" is a string in YAML)
    assert run_config.DATASET.ISAID_DIR == "/from/file"
    assert run_config.DATASET.VAIHINGEN_DIR == "/from/set"
    assert config.get_cfg().DATASET.ISAID_DIR == "./data/iSAID"  # the defaults are untouched
    assert args.bs_mult == 4  # untouched default (the original's)


def test_file_values_are_typed_as_the_flags(tmp_path):
    experiment = tmp_path / "exp.yaml"
    # 1e-3 is a string in YAML, 2024 an integer: the command line would give float 0.001 and text "2024"
    experiment.write_text("weight_decay: 1e-3\nlr: 1\nexp: 2024\npre_size: null\ngblur: false\namp: bf16\n")
    args, _, _ = train.parse_args(["--config", str(experiment)])
    assert args.weight_decay == 0.001 and isinstance(args.lr, float) and args.lr == 1.0
    assert args.exp == "2024" and args.pre_size is None and args.gblur is False and args.amp == "bf16"


def test_effective_config_round_trips_through_config_yaml_without_run_control_flags(tmp_path):
    args, run_config, _ = train.parse_args([
        "--lr", "0.01", "--joint_edge_loss_pfnet", "--set", "DATASET.ISAID_DIR=/data/x", "--resume", "runs/last.pth",
        "--stop_after", "2", "--overwrite", "--num_workers", "1", "--device", "cpu", "--trusted-pickle"])
    saved = config.effective_config(train.flag_values(args), run_config)
    config.save_config(tmp_path / "config.yaml", saved)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["DATASET"]["ISAID_DIR"] == "/data/x" and written["lr"] == 0.01
    assert not RUN_CONTROL_KEYS & set(written)
    again, again_config, _ = train.parse_args(["--config", str(tmp_path / "config.yaml")])
    assert again.resume is None and again.stop_after is None and again.overwrite is False
    assert again.trusted_pickle is False
    assert train.flag_values(again) == train.flag_values(args)
    # the values themselves, written out: a value wrong both ways would pass the round trip alone
    assert again.lr == 0.01 and again.joint_edge_loss_pfnet is True and again.dataset == "iSAID"
    assert again_config.DATASET.ISAID_DIR == "/data/x"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lrr: 0.1\n", r"unknown flags \['lrr'\]"),
        ("config: other.yaml\n", r"unknown flags \['config'\]"),
        ("amp: fp8\n", r"bad\.yaml: amp: 'fp8' is not allowed; choose from \['bf16', 'fp16', 'off'\]"),
        ("lr_schedule: linear\n", r"lr_schedule: 'linear' is not allowed; choose from \['poly', 'scl-poly'\]"),
        ("bs_mult: 2.5\n", r"bad\.yaml: bs_mult: 2\.5 is not an integer"),
        ("bs_mult: '2.5'\n", r"bs_mult: '2\.5' is not an integer"),
        ("lr: fast\n", r"lr: 'fast' is not a number"),
        ("max_epoch: true\n", r"max_epoch: True is not an integer"),
        ("ohem: 1\n", r"ohem: 1 is not an on/off value; use true or false"),
        ("arch: [pfnet_r50]\n", r"arch: \['pfnet_r50'\] is not a text value"),
        ("DATASET:\n  ISAID_ROOT: /x\n", "unknown config key 'DATASET.ISAID_ROOT'"),
        ("- 1\n- 2\n", "expected a YAML mapping"),
    ],
)
def test_bad_experiment_files_are_named(tmp_path, capsys, content, message):
    experiment = tmp_path / "bad.yaml"
    experiment.write_text(content)
    with pytest.raises(SystemExit):
        train.parse_args(["--config", str(experiment)])
    error = capsys.readouterr().err
    assert re.search(message, error) and "bad.yaml" in error


def test_bad_override_is_rejected(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--set", "DATASET.NOPE=1"])
    assert "--set DATASET.NOPE=1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--set", "justtext"])
    with pytest.raises(SystemExit):
        train.parse_args(["--set", "amp=fp8"])
    assert "--set amp=fp8: 'fp8' is not allowed; choose from ['bf16', 'fp16', 'off']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--set", "bs_mult=2.5"])
    assert "--set bs_mult=2.5: 2.5 is not an integer" in capsys.readouterr().err


def test_original_apex_flags_map_to_native_amp_and_ddp():
    args, _, notes = train.parse_args(["--apex", "--fp16", "--class_uniform_pct", "0.5", "--aux"])
    assert args.amp == "fp16"
    assert any("--apex" in note and "DistributedDataParallel" in note for note in notes)
    assert any("--class_uniform_pct" in note for note in notes)
    args, _, notes = train.parse_args(["--apex"])
    assert args.amp == "off"  # the original's --apex was DDP only: its scripts trained in float32
    apex_note = next(note for note in notes if note.startswith("--apex"))
    assert "mixed precision is --amp fp16 or --amp bf16" in apex_note and "--fp16 maps to --amp fp16" in apex_note
    assert apex_note.endswith("this run uses --amp off")
    help_text = " ".join(train.build_parser().format_help().split())
    assert "choose that with --amp (--fp16 = --amp fp16)" in help_text


@pytest.mark.parametrize("argv", [["--bs_mult", "1"], ["--lr_schedule", "scl-poly"], ["--dataset", "cityscapes"],
                                  ["--resume", "a.pth", "--snapshot", "b.pth"], ["--amp", "fp8"]])
def test_invalid_combinations_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(("cores", "local_processes", "expected"),
                         [(3, "1", 3), (20, "1", 8), (6, "2", 3), (1, "4", 1)])
def test_num_workers_default_is_the_cores_this_process_may_use(monkeypatch, cores, local_processes, expected):
    """train.py and eval.py: the CPU cores of this process's affinity, shared among the torchrun processes of the
    machine, 1 to 8; the help says so."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    for parser in (train.build_parser(), evaluation.build_parser()):
        assert parser.get_default("num_workers") == expected
        help_text = " ".join(parser.format_help().split())
        assert "default: the CPU cores this process may use" in help_text and f"here {expected})" in help_text


def test_dataset_dir_is_the_root_train_reads_instead_of_the_configuration(tmp_path, capsys):
    missing = tmp_path / "elsewhere"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={tmp_path / 'configured'}", "--dataset_dir",
                    str(missing), "--device", "cpu", "--num_workers", "0", "--ckpt", str(tmp_path / "ckpt"),
                    "--tb_path", str(tmp_path / "tb")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{missing}/train/images does not exist" in error and "configured" not in error
