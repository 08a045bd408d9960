"""eval.py and predict.py speak one flag vocabulary (evaluation/cli.py); the original's names stay as aliases."""

import eval as eval_script
import predict

SHARED = ["--window", "--crop_size", "--stride", "--overlap", "--sliding_overlap", "--blend", "--scales", "--flip",
          "--hflip", "--no_flip", "--vflip", "--rot90", "--batch_size", "--device", "--trusted-pickle",
          "--trusted_pickle", "--bands", "--scaling", "--precision", "--weights"]


def options(parser):
    """{option string: (dest, help)} of an argparse parser."""
    return {name: (action.dest, action.help) for action in parser._actions for name in action.option_strings}


def test_shared_flags_have_one_meaning_in_both_entry_points():
    eval_options, predict_options = options(eval_script.build_parser()), options(predict.build_parser())
    for flag in SHARED:
        assert flag in eval_options and flag in predict_options, flag
        assert eval_options[flag][0] == predict_options[flag][0], flag
    # aliases land on the same setting
    assert eval_options["--crop_size"][0] == eval_options["--window"][0] == "window"
    assert eval_options["--sliding_overlap"][0] == "overlap" and eval_options["--hflip"][0] == "flip"


def test_same_values_parse_alike_and_defaults_follow_each_protocol():
    common = ["--crop_size", "40", "--sliding_overlap", "0.5", "--vflip", "--rot90", "--bands", "4,1,2"]
    evaluated = eval_script.build_parser().parse_args(["--dataset", "iSAID", "--snapshot", "x", "--arch", "a", *common])
    predicted = predict.build_parser().parse_args(["in.tif", "--snapshot", "x", "--out_dir", "o", *common])
    for name in ("window", "overlap", "vflip", "rot90", "bands"):
        assert getattr(evaluated, name) == getattr(predicted, name), name
    eval_defaults = eval_script.build_parser().parse_args(["--dataset", "iSAID", "--snapshot", "x", "--arch", "a"])
    predict_defaults = predict.build_parser().parse_args(["in.tif", "--snapshot", "x", "--out_dir", "o"])
    assert (eval_defaults.window, eval_defaults.flip, eval_defaults.blend) == (513, True, "mean")
    assert (predict_defaults.window, predict_defaults.flip, predict_defaults.blend) == (896, False, "gaussian")

