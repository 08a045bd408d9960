"""eval.py, predict.py and train.py speak one flag vocabulary (evaluation/cli.py); no name means two things."""

import pytest
import torch

import eval as eval_script
import predict
import train

SHARED = ["--window", "--stride", "--overlap", "--sliding_overlap", "--blend", "--scales", "--flip",
          "--hflip", "--no_flip", "--vflip", "--rot90", "--batch_size", "--device", "--trusted-pickle",
          "--trusted_pickle", "--bands", "--scaling", "--precision", "--weights"]
# What train.py shares with the inference entry points.
SHARED_WITH_TRAIN = ["--dataset_dir", "--device", "--trusted-pickle", "--trusted_pickle", "--num_workers"]


def options(parser):
    """{option string: (dest, help)} of an argparse parser."""
    return {name: (action.dest, action.help) for action in parser._actions for name in action.option_strings}


def test_shared_flags_have_one_meaning_in_both_entry_points():
    eval_options, predict_options = options(eval_script.build_parser()), options(predict.build_parser())
    for flag in SHARED:
        assert flag in eval_options and flag in predict_options, flag
        assert eval_options[flag][0] == predict_options[flag][0], flag
    # aliases land on the same setting
    assert eval_options["--sliding_overlap"][0] == "overlap" and eval_options["--hflip"][0] == "flip"


def test_train_shares_the_dataset_device_and_trust_flags():
    train_options, eval_options = options(train.build_parser()), options(eval_script.build_parser())
    for flag in SHARED_WITH_TRAIN:
        assert train_options[flag][0] == eval_options[flag][0], flag
    # --crop_size is the training patch only: no inference flag takes that name
    assert train_options["--crop_size"][0] == "crop_size"
    assert "--crop_size" not in eval_options and "--crop_size" not in options(predict.build_parser())


def test_device_values_parse_alike_in_the_three_entry_points():
    parsers = {"train": (train.build_parser(), []), "eval": (eval_script.build_parser(), ["--dataset", "iSAID"]),
               "predict": (predict.build_parser(), ["in.tif", "--out_dir", "o"])}
    for name, (parser, required) in parsers.items():
        assert parser.parse_args(required).device == "auto", name
        assert parser.parse_args([*required, "--device", "cpu"]).device == "cpu", name
        with pytest.raises(SystemExit):
            parser.parse_args([*required, "--device", "gpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda was given but CUDA is not available" in capsys.readouterr().err


def test_same_values_parse_alike_and_defaults_follow_each_protocol():
    common = ["--window", "40", "--sliding_overlap", "0.5", "--vflip", "--rot90", "--bands", "4,1,2"]
    evaluated = eval_script.build_parser().parse_args(["--dataset", "iSAID", "--snapshot", "x", "--arch", "a", *common])
    predicted = predict.build_parser().parse_args(["in.tif", "--snapshot", "x", "--out_dir", "o", *common])
    for name in ("window", "overlap", "vflip", "rot90", "bands"):
        assert getattr(evaluated, name) == getattr(predicted, name), name
    eval_defaults = eval_script.build_parser().parse_args(["--dataset", "iSAID", "--snapshot", "x", "--arch", "a"])
    predict_defaults = predict.build_parser().parse_args(["in.tif", "--snapshot", "x", "--out_dir", "o"])
    assert (eval_defaults.window, eval_defaults.flip, eval_defaults.blend) == (513, True, "mean")
    assert (predict_defaults.window, predict_defaults.flip, predict_defaults.blend) == (896, False, "gaussian")


def test_the_original_no_op_flags_are_one_group_in_each_entry_point():
    for parser, flags in ((train.build_parser(), {"--cv", "--sgd", "--aux", "--wt_bound", "--max_cu_epoch"}),
                          (eval_script.build_parser(), {"--cv_split", "--mode", "--with_f1"})):
        groups = [group for group in parser._action_groups if group.title.startswith("accepted for the original")]
        assert len(groups) == 1
        assert flags <= {name for action in groups[0]._group_actions for name in action.option_strings}
