"""Cross-cutting I/O: atomic writes, checkpoint files, palettes, raster reading and writing."""
