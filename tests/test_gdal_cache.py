"""GDAL's block cache is bounded wherever the project reads or writes rasters; the user's GDAL_CACHEMAX wins."""
import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="rasterio is in requirements.txt")

from utils.image_io import GDAL_CACHE_BYTES, gdal_cache_max  # noqa: E402
from utils.raster_io import CogSink  # noqa: E402


def test_cache_limit_is_bounded_unless_the_environment_sets_it(monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert gdal_cache_max() == GDAL_CACHE_BYTES == 64 * 2**20
    for value, expected in (("32", 32 * 2**20), ("200000000", 200000000)):  # GDAL's syntax: MB below 100000
        monkeypatch.setenv("GDAL_CACHEMAX", value)
        assert gdal_cache_max() == expected
    monkeypatch.setenv("GDAL_CACHEMAX", "lots")
    with pytest.raises(ValueError, match="GDAL_CACHEMAX='lots'"):
        gdal_cache_max()


@pytest.mark.parametrize("environment, expected", [(None, GDAL_CACHE_BYTES), ("32", 32 * 2**20)])
def test_cog_writer_runs_under_the_bounded_cache_from_open_to_close(environment, expected, monkeypatch, tmp_path):
    """Without any reader open (a PNG input): the writer's stream, COG copy and read-back all see the limit."""
    if environment is None:
        monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    else:
        monkeypatch.setenv("GDAL_CACHEMAX", environment)
    sink = CogSink(tmp_path / "mask.tif", 64, 64)
    assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == expected
    sink.write(0, 0, np.ones((64, 64), np.uint8))
    sink.close()
    assert not rasterio.env.hasenv()  # left on close
    with rasterio.open(tmp_path / "mask.tif") as dataset:
        assert dataset.read(1).sum() == 64 * 64
