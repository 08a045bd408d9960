"""Where the arch and the model options come from: flag, else checkpoint, else the registry."""
import argparse

import pytest

import network
from network.options import add_model_flags, resolve_model_options

ORIGINAL_R50 = "network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply"


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    return parser.parse_args(list(argv))


def test_registry_defaults_are_the_official_scripts_values():
    resolved = resolve_model_options(flags(), None)
    assert resolved.arch == "pfnet_r50"
    assert resolved.options == {"maxpool_size": 14, "avgpool_size": 9, "edge_points": 128, "match_dim": 64}
    assert set(resolved.sources.values()) == {"registry default"} and resolved.warnings == ()
    assert network.model_defaults("pfnet_r101") == {"maxpool_size": 14, "avgpool_size": 9, "edge_points": 128,
                                                    "match_dim": 64}


def test_checkpoint_values_fill_what_the_flags_leave_out():
    saved = {"arch": "pfnet_r101", "maxpool_size": 9, "edge_points": 32, "lr": 0.01}
    resolved = resolve_model_options(flags("--match_dim", "32"), saved, "run/last.pth")
    assert resolved.arch == "pfnet_r101" and resolved.sources["arch"] == "checkpoint"
    assert resolved.options == {"maxpool_size": 9, "avgpool_size": 9, "edge_points": 32, "match_dim": 32}
    assert resolved.sources == {"arch": "checkpoint", "maxpool_size": "checkpoint", "avgpool_size": "registry default",
                                "edge_points": "checkpoint", "match_dim": "flag"}
    assert resolved.describe().startswith("arch pfnet_r101 (checkpoint), maxpool_size 9 (checkpoint)")


def test_a_contradicting_flag_wins_with_a_warning_naming_both():
    resolved = resolve_model_options(flags("--edge_points", "64"), {"edge_points": 128}, "run/last.pth")
    assert resolved.options["edge_points"] == 64
    assert resolved.warnings == ("--edge_points 64 contradicts the value 128 saved in run/last.pth; using 64",)


def test_the_original_name_of_the_saved_arch_is_no_contradiction():
    resolved = resolve_model_options(flags("--arch", ORIGINAL_R50), {"arch": "pfnet_r50"})
    assert resolved.warnings == () and resolved.sources["arch"] == "flag"
    contradicted = resolve_model_options(flags("--arch", "pfnet_r101"), {"arch": ORIGINAL_R50})
    assert len(contradicted.warnings) == 1 and "--arch pfnet_r101" in contradicted.warnings[0]


def test_unknown_arch_lists_the_known_names():
    with pytest.raises(KeyError, match="pfnet_r50"):
        resolve_model_options(flags("--arch", "pfnet_r18"), None)


def test_an_option_the_arch_lacks_is_ignored_with_a_warning(monkeypatch):
    entry = network.model_entry("pfnet_r50")
    monkeypatch.setitem(network.registry._ENTRIES, "no_options",
                        network.ModelEntry("no_options", entry.builder, {}, entry.classifier_key))
    resolved = resolve_model_options(flags("--arch", "no_options", "--maxpool_size", "9"), None)
    assert resolved.options == {} and resolved.sources == {"arch": "flag"}
    assert resolved.warnings == ("--arch no_options has no option --maxpool_size: ignored (its options: none)",)
