"""The reader's GDAL source policy (utils/source_policy.py) as a user meets it: predict.py and the custom-dataset
preparation refuse a VRT (also one named .tif) that would read a file outside its folder or a network path,
with one line naming the file and the flag, before GDAL reads anything; ``--allow-source-root`` and
``--allow-network-sources`` let such inputs through."""
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from faults import Case, assert_clean_failure, id_mask_dataset, run_in_process, vrt_text

import predict
from tools import prepare_dataset
from utils.image_io import SourcePolicyError, gdal_env, image_size, read_image
from utils.source_policy import STRICT_SOURCES, SourcePolicy

rasterio = pytest.importorskip("rasterio")
SIZE = 64


@contextmanager
def loopback_listener():
    """A TCP listener on 127.0.0.1: yields (port, connections), the list of connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    connections, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connections.append(connection.getpeername())
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], connections
    finally:
        stop.set()
        thread.join()
        server.close()


def write_png(pixels: np.ndarray) -> callable:
    return lambda path: cv2.imwrite(str(path), pixels)


def write_text(text: str) -> callable:
    return lambda path: path.write_text(text)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A folder of private files (a photo, raw bytes) and VRTs in other folders that point at them."""
    base = tmp_path_factory.mktemp("gdal_policy")
    outside = base / "private"
    outside.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
    cv2.imwrite(str(outside / "photo.png"), photo)
    secret = np.random.default_rng(1).integers(0, 256, SIZE * SIZE, np.uint8).tobytes()
    (outside / "secret.bin").write_bytes(secret)
    vrts = {"absolute": (vrt_text(str(outside / "photo.png"), relative=False), "scene.vrt"),
            "relative": (vrt_text("../../private/photo.png"), "scene.vrt"),
            "raw_bytes": (vrt_text("../../private/secret.bin", raw=True), "scene.vrt"),
            "disguised": (vrt_text("../../private/photo.png"), "scene.tif")}
    paths = {}
    for kind, (text, name) in vrts.items():
        (base / "inputs" / kind).mkdir(parents=True)
        paths[kind] = base / "inputs" / kind / name
        paths[kind].write_text(text)
    inside = base / "inputs" / "inside"
    inside.mkdir()
    cv2.imwrite(str(inside / "tile.png"), photo)
    (inside / "scene.vrt").write_text(vrt_text("tile.png"))
    snapshot = base / "model.pth"
    snapshot.write_bytes(b"never read: the inputs are checked first")
    return {"base": base, "outside": outside, "photo_rgb": photo[..., ::-1], "secret": secret,
            "inside": inside / "scene.vrt", "snapshot": snapshot, **paths}


def predict_case(files: dict, image: Path, *flags: str, names: tuple[str, ...]) -> Case:
    out = files["base"] / "predict_out" / image.parent.name
    argv = ["predict.py", str(image), "--snapshot", str(files["snapshot"]), "--out_dir", str(out), "--device", "cpu",
            "--window", str(SIZE), *flags]
    return Case(argv, 2, names, unchanged=(files["outside"],), absent=(out,))


@pytest.mark.parametrize("kind", ["absolute", "relative", "raw_bytes", "disguised"])
def test_predict_refuses_a_vrt_reading_outside_its_folder(files, capsys, kind):
    case = predict_case(files, files[kind], names=(str(files[kind]), "--allow-source-root", str(files["outside"])))
    assert_clean_failure(run_in_process(predict.main, case, capsys))


def test_predict_refuses_a_network_source_without_any_request(files, capsys, tmp_path):
    with loopback_listener() as (port, connections):
        vrt = tmp_path / "remote.vrt"
        vrt.write_text(vrt_text(f"/vsicurl/http://127.0.0.1:{port}/x.tif", relative=False))
        case = predict_case(files, vrt, names=(str(vrt), "network path", "--allow-network-sources"))
        assert_clean_failure(run_in_process(predict.main, case, capsys))
        with pytest.raises(SourcePolicyError, match="network path"):
            read_image(f"/vsicurl/http://127.0.0.1:{port}/x.tif")
    assert connections == []


def test_gdal_itself_makes_no_request_under_the_default_policy(tmp_path):
    """The second line of defence: the GDAL options of the default policy stop /vsicurl/ before any request,
    while with --allow-network-sources the listener is reached (so the listener does see requests)."""
    with loopback_listener() as (port, connections):
        for policy in (STRICT_SOURCES, SourcePolicy(network=True)):
            with gdal_env(policy), pytest.raises(rasterio.errors.RasterioIOError):
                rasterio.open(f"/vsicurl/http://127.0.0.1:{port}/policy_{policy.network}.tif")
            if not policy.network:
                assert connections == [], "no request under the default policy"
    assert connections, "with the network allowed, GDAL connected"


def test_sources_inside_the_folder_or_an_allowed_root_are_read(files):
    np.testing.assert_array_equal(read_image(files["inside"]), files["photo_rgb"])
    allowed = SourcePolicy(roots=(str(files["outside"]),))
    np.testing.assert_array_equal(read_image(files["disguised"], policy=allowed), files["photo_rgb"])
    assert read_image(files["raw_bytes"], policy=allowed)[..., 0].tobytes() == files["secret"]
    assert image_size(files["relative"], allowed) == (SIZE, SIZE)
    with pytest.raises(SourcePolicyError, match="--allow-source-root"):
        image_size(files["relative"])


def test_nested_vrt_is_followed(files, tmp_path):
    (tmp_path / "outer.vrt").write_text(vrt_text(str(files["relative"]), relative=False))
    with pytest.raises(SourcePolicyError, match=r"private/photo.png.*through .*relative/scene.vrt.*--allow-source"):
        read_image(tmp_path / "outer.vrt", policy=SourcePolicy(roots=(str(files["relative"].parent),)))


def custom_vrt_dataset(root: Path, vrt: str, name: str = "b.vrt") -> Path:
    pixels = np.full((SIZE, SIZE, 3), 90, np.uint8)
    return id_mask_dataset(root, {"a.png": write_png(pixels), name: write_text(vrt)})


@pytest.mark.parametrize("name", ["b.vrt", "b.tif"])
def test_prepare_custom_refuses_a_vrt_reading_outside_and_allows_it_with_the_flag(files, capsys, tmp_path, name):
    spec = custom_vrt_dataset(tmp_path / "data", vrt_text(str(files["outside"] / "photo.png"), relative=False), name)
    vrt = tmp_path / "data" / "images" / name
    argv = ["tools/prepare_dataset.py", "custom", "--spec", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"]
    case = Case(argv, 1, (str(vrt), "--allow-source-root", str(files["outside"])), unchanged=(files["outside"],),
                absent=(tmp_path / "out" / "train",))
    assert_clean_failure(run_in_process(prepare_dataset.main, case, capsys))
    prepare_dataset.main([*argv[1:], "--allow-source-root", str(files["outside"])])
    written = sorted((tmp_path / "out").glob("*/images/b.png"))
    assert len(written) == 1
    np.testing.assert_array_equal(cv2.imread(str(written[0]))[..., ::-1], files["photo_rgb"])


def test_prepare_custom_refuses_a_raw_byte_source(files, capsys, tmp_path):
    spec = custom_vrt_dataset(tmp_path / "data", vrt_text(str(files["outside"] / "secret.bin"), relative=False,
                                                          raw=True))
    argv = ["tools/prepare_dataset.py", "custom", "--spec", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"]
    case = Case(argv, 1, ("b.vrt", "secret.bin", "--allow-source-root"), absent=(tmp_path / "out" / "train",))
    assert_clean_failure(run_in_process(prepare_dataset.main, case, capsys))


def test_allow_source_root_must_be_a_folder(files, capsys, tmp_path):
    case = predict_case(files, files["inside"], "--allow-source-root", str(tmp_path / "nothing"),
                        names=("--allow-source-root", str(tmp_path / "nothing")))
    assert_clean_failure(run_in_process(predict.main, case, capsys))


def test_prepare_custom_reads_a_vrt_whose_sources_lie_in_its_folder(files, tmp_path):
    spec = custom_vrt_dataset(tmp_path / "data", vrt_text("sources/tile.png"))
    (tmp_path / "data" / "images" / "sources").mkdir()
    cv2.imwrite(str(tmp_path / "data" / "images" / "sources" / "tile.png"), files["photo_rgb"][..., ::-1])
    prepare_dataset.main(["custom", "--spec", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    (written,) = (tmp_path / "out").glob("*/images/b.png")
    np.testing.assert_array_equal(cv2.imread(str(written))[..., ::-1], files["photo_rgb"])
