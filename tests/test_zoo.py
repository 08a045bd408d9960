"""Named weights (network.zoo): download once from a mirror, cache, verify, refuse wrong files; --weights in the
entry points. Nothing here reaches the network: the mirror is a file:// folder or a server on 127.0.0.1, and the
entries are test-only ones registered through PFSEG_ZOO_TEST_ENTRIES (never listed)."""
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import full_disk_available, run_on_full_disk
from script_run import REPO, run_script
from train_data import make_tiny_potsdam

import eval as evaluation
import network
from datasets.isprs import VaihingenDataset
from network import zoo
from utils.atomic import PARTIAL_MARK
from utils.checkpoint import read_checkpoint, save_checkpoint

TEST_ENTRY = "test.vaihingen"
ENTRIES = [
    {"name": TEST_ENTRY, "kind": "checkpoint", "arch": "upernet_r18", "dataset": "Vaihingen"},
    {"name": "test.potsdam", "kind": "checkpoint", "arch": "upernet_r18", "dataset": "potsdam"},
    {"name": "test.isaid", "kind": "checkpoint", "arch": "upernet_r18", "dataset": "iSAID"},
    {"name": "test.drive", "kind": "checkpoint", "arch": "upernet_r18", "dataset": "Vaihingen",
     "drive_file_id": "TEST-FILE-ID"},
]

# end-to-end runs of the entry points: `make test` runs them, `make test-fast` leaves them out
pytestmark = [pytest.mark.workflow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def six_class_file(tmp_path_factory):
    """A 6-class UperNet-R18 checkpoint (random weights), as the mirror serves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "upernet_r18_6.pth"
    save_checkpoint(path, {"state_dict": network.get_model("upernet_r18", 6).state_dict(), "epoch": 3})
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch, six_class_file):
    """A file:// mirror holding the test entries' files, an empty cache, the test entries registered."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in (TEST_ENTRY, "test.potsdam", "test.isaid"):
        os.symlink(six_class_file, folder / f"{name}.pth")
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps(ENTRIES))
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(zoo.MIRROR_ENV, f"file://{folder}")
    monkeypatch.setenv(zoo.TEST_ENTRIES_ENV, str(entries))
    return folder


def cache_files(folder) -> list[str]:
    """Names in the cache other than the lock files."""
    return sorted(path.name for path in folder.iterdir() if not path.name.endswith(".lock")) if folder.exists() else []


def flip_byte(path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_first_use_downloads_once_then_reads_no_url(mirror, six_class_file, capsys):
    path = zoo.weights_path(TEST_ENTRY)
    assert path == zoo.cache_dir() / f"{TEST_ENTRY}.pth"
    assert path.read_bytes() == six_class_file.read_bytes()
    assert "downloading test.vaihingen from file://" in capsys.readouterr().err
    record = json.loads((zoo.cache_dir() / zoo.RECORD_FILE).read_text())[TEST_ENTRY]
    assert record["sha256"] == zoo.file_sha256(six_class_file) and record["bytes"] == six_class_file.stat().st_size
    assert cache_files(zoo.cache_dir()) == [zoo.RECORD_FILE, f"{TEST_ENTRY}.pth"]

    shutil.rmtree(mirror)  # a second use must not need the source
    written = path.stat().st_mtime_ns
    assert zoo.weights_path(TEST_ENTRY) == path
    assert path.stat().st_mtime_ns == written
    assert "downloading" not in capsys.readouterr().err


def test_a_later_download_with_one_flipped_byte_is_refused_with_both_hashes(mirror, six_class_file):
    first = zoo.weights_path(TEST_ENTRY)
    good = zoo.file_sha256(first)
    first.unlink()
    (mirror / f"{TEST_ENTRY}.pth").unlink()
    shutil.copyfile(six_class_file, mirror / f"{TEST_ENTRY}.pth")
    flip_byte(mirror / f"{TEST_ENTRY}.pth")
    bad = zoo.file_sha256(mirror / f"{TEST_ENTRY}.pth")
    with pytest.raises(zoo.WeightsError) as caught:
        zoo.weights_path(TEST_ENTRY)
    message = str(caught.value)
    assert bad in message and good in message and "\n" not in message
    assert cache_files(zoo.cache_dir()) == [zoo.RECORD_FILE]  # nothing half-written, no partial kept


def test_a_cached_file_that_changed_is_refused_with_both_hashes(mirror):
    path = zoo.weights_path(TEST_ENTRY)
    good = zoo.file_sha256(path)
    flip_byte(path)
    with pytest.raises(zoo.WeightsError, match=f"sha256 {zoo.file_sha256(path)} differs from .* {good}"):
        zoo.weights_path(TEST_ENTRY)


def test_an_html_page_saved_as_pth_is_refused(mirror):
    (mirror / f"{TEST_ENTRY}.pth").unlink()
    (mirror / f"{TEST_ENTRY}.pth").write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded"
                                              "</title></head></html>")
    with pytest.raises(zoo.WeightsError) as caught:
        zoo.weights_path(TEST_ENTRY)
    assert "sent an HTML page" in str(caught.value) and "\n" not in str(caught.value)
    assert str(zoo.cached_file(TEST_ENTRY)) in str(caught.value)  # where to put a file downloaded by hand
    assert cache_files(zoo.cache_dir()) == []


def test_other_classes_than_the_entry_are_refused(mirror):
    with pytest.raises(zoo.WeightsError, match="holds 6 classes .* for the 16 classes of iSAID"):
        zoo.weights_path("test.isaid")
    assert cache_files(zoo.cache_dir()) == []


def test_unknown_name_lists_the_names_and_test_entries_stay_unlisted(mirror):
    with pytest.raises(zoo.UnknownWeightsError) as caught:
        zoo.weights_path("pfnet_r50.isiad")
    assert all(name in str(caught.value) for name in zoo.ZOO) and TEST_ENTRY not in str(caught.value)
    zoo.weights_path(TEST_ENTRY)
    listing = run_script("-m", "network.zoo", "list", timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:6]] == list(zoo.ZOO)
    assert TEST_ENTRY not in listing.stdout
    isaid = next(line for line in listing.stdout.splitlines() if line.startswith("pfnet_r50.isaid "))
    assert "pfnet_r50" in isaid and "iSAID" in isaid and " 16 " in isaid and "66.9" in isaid and " no " in isaid


def test_official_entries_take_their_facts_from_the_registries():
    isaid, potsdam = zoo.zoo_entry("pfnet_r50.isaid"), zoo.zoo_entry("pfnet_r50.potsdam")
    assert isaid.drive_file_id == "1igB0y-5IybcIxf0cALFoqh0Pg36OxWR-" and isaid.published_miou == 66.9
    assert isaid.options == network.model_defaults("pfnet_r50") and len(isaid.class_names) == 16
    assert np.array_equal(zoo.zoo_entry("pfnet_r50.vaihingen").palette, VaihingenDataset.palette)
    assert potsdam.class_names == list(VaihingenDataset.class_names) and "--maxpool_size 9" in potsdam.eval_flags
    assert zoo.zoo_entry("resnet101_deep.imagenet").file_name == "resnet101-deep.pth"


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``data`` at any path with HTTP Range support; the first response stops after ``cut_after`` bytes."""

    def __init__(self, data: bytes, cut_after: int):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.data, self.cut_after, self.ranges = data, cut_after, []


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
        body = self.server.data[start:]
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(self.server.ranges) == 1:
            body = body[:self.server.cut_after]  # the connection drops mid-file
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_interrupted_https_download_resumes_with_a_range_request(mirror, six_class_file, monkeypatch):
    data = six_class_file.read_bytes()
    server = RangeServer(data, cut_after=len(data) // 3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(zoo.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/weights")
    try:
        with pytest.raises(zoo.WeightsError, match="partial download is kept"):
            zoo.weights_path(TEST_ENTRY)
        assert not zoo.cached_file(TEST_ENTRY).exists()
        assert zoo.cache_state(TEST_ENTRY) == "partial"
        path = zoo.weights_path(TEST_ENTRY)
    finally:
        server.shutdown()
    assert server.ranges == [None, f"bytes={len(data) // 3}-"]
    assert path.read_bytes() == data and cache_files(zoo.cache_dir()) == [zoo.RECORD_FILE, f"{TEST_ENTRY}.pth"]


def test_no_network_gives_the_manual_link_and_the_path(mirror, monkeypatch):
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://127.0.0.1:9/weights")  # the discard port: connection refused
    with pytest.raises(zoo.WeightsError) as caught:
        zoo.weights_path("test.drive")
    message = str(caught.value)
    assert "https://drive.google.com/file/d/TEST-FILE-ID/view" in message and "\n" not in message
    assert f"save it as {zoo.cached_file('test.drive')}" in message


@pytest.mark.skipif(not full_disk_available(), reason="needs unshare and a private tmpfs mount")
def test_a_full_disk_leaves_nothing_in_the_cache(mirror, tmp_path, monkeypatch):
    cache = tmp_path / "full-cache"
    monkeypatch.setenv(zoo.HOME_ENV, str(cache))
    result = run_on_full_disk(cache, ["-m", "network.zoo", "download", TEST_ENTRY], keep=tmp_path / "kept")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in result.stderr
    kept = tmp_path / "kept"
    assert [path.name for path in kept.iterdir() if path.name != ".filler" and not path.name.endswith(".lock")] == []


def test_get_model_with_weights(mirror, six_class_file):
    model = network.get_model("upernet_r18", weights=TEST_ENTRY)
    expected = read_checkpoint(six_class_file)["state_dict"]
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())
    with pytest.raises(zoo.WeightsError, match="not pfnet_r50"):
        network.get_model("pfnet_r50", weights=TEST_ENTRY)
    with pytest.raises(zoo.WeightsError, match="not 16; to fine-tune"):
        network.get_model("upernet_r18", 16, weights=TEST_ENTRY)


def test_predict_with_weights_needs_no_snapshot_and_no_dataset(mirror, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    pixels = np.random.default_rng(0).integers(0, 256, (3, 48, 72), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 72, "height": 48, "count": 3, "dtype": "uint8", "crs": "EPSG:32632",
               "transform": from_origin(500000, 5000000, 0.1, 0.1)}
    with rasterio.open(tmp_path / "tile.tif", "w", **profile) as tile:
        tile.write(pixels)
    result = run_script("predict.py", str(tmp_path / "tile.tif"), "--weights", TEST_ENTRY, "--out_dir",
                        str(tmp_path / "o"), "--window", "48", "--device", "cpu", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with rasterio.open(tmp_path / "o" / "tile_pred.tif") as mask:
        assert (mask.height, mask.width) == (48, 72)
        colours = mask.colormap(1)
    assert [colours[index][:3] for index in range(6)] == [tuple(rgb) for rgb in VaihingenDataset.palette.tolist()]
    refused = run_script("predict.py", str(tmp_path / "tile.tif"), "--weights", "pfnet_r50.isiad", "--out_dir",
                         str(tmp_path / "o2"), "--device", "cpu", timeout=300)
    assert refused.returncode == 2 and "unknown weights 'pfnet_r50.isiad'; known: pfnet_r50.isaid" in refused.stderr


def test_eval_with_weights(mirror, tmp_path):
    root = make_tiny_potsdam(tmp_path)
    evaluation.main(["--weights", "test.potsdam", "--dataset", "Posdam", "--dataset_dir", str(root), "--split", "test",
                     "-im", "whole", "--single_scale", "--no_flip", "--device", "cpu", "--num_workers", "0",
                     "--out_dir", str(tmp_path / "scores")])
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert metrics["arch"] == "upernet_r18" and metrics["weights"] == "test.potsdam"
    assert metrics["snapshot"] == str(zoo.cached_file("test.potsdam"))
    with pytest.raises(SystemExit):
        evaluation.main(["--dataset", "Posdam", "--dataset_dir", str(root), "--out_dir", str(tmp_path / "none")])
    assert not any(PARTIAL_MARK in path.name for path in zoo.cache_dir().iterdir())


def test_train_weights_refusals_are_one_line(mirror, tmp_path, capsys):
    import train

    out = ["--ckpt", str(tmp_path / "ckpt"), "--tb_path", str(tmp_path / "tb"), "--device", "cpu"]
    cases = [(["--weights", "pfnet_r50.isiad"], "--weights: unknown weights 'pfnet_r50.isiad'; known: pfnet_r50.isaid"),
             (["--weights", TEST_ENTRY, "--snapshot", "x.pth"], "--weights: --weights test.vaihingen gives the "
                                                                 "--snapshot file: leave out --snapshot x.pth")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as stopped:
            train.main(["--dataset", "Vaihingen", *out, *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_docs_give_the_eval_command_and_ids_of_every_official_entry():
    text = (REPO / "docs" / "models.md").read_text()
    for entry in zoo.ZOO.values():
        assert f"`{entry.name}`" in text and (entry.drive_file_id or entry.drive_folder_id) in text
        if entry.kind == zoo.CHECKPOINT:
            command = f"python eval.py --weights {entry.name} {entry.eval_flags}"
            assert command + "\n" in text
            assert evaluation.build_parser().parse_args(command.split()[2:]).weights == entry.name


def test_train_fine_tunes_from_named_weights(mirror, tmp_path):
    import train

    root = make_tiny_potsdam(tmp_path)
    result = train.main(["--dataset", "Posdam", "--set", f"DATASET.POSDAM_DIR={root}", "--crop_size", "64",
                         "--weights", "test.potsdam", "--max_epoch", "1", "--bs_mult", "2", "--num_workers", "0",
                         "--device", "cpu", "--ckpt", str(tmp_path / "ckpt"), "--tb_path", str(tmp_path / "tb")])
    log = (Path(result["run_dir"]) / "train.log").read_text()
    assert f"weights from {zoo.cached_file('test.potsdam')}" in log and "arch upernet_r18" in log


def test_export_onnx_weights_flag_checks(mirror, tmp_path, capsys):
    from tools import export_onnx

    cases = [([], "--snapshot is required (or --weights NAME"),
             (["--weights", "resnet50_deep.imagenet"], "is an ImageNet trunk")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as stopped:
            export_onnx.main(["--out", str(tmp_path / "m.onnx"), *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert zoo.cache_state("resnet50_deep.imagenet") == "no"  # refused before any download
