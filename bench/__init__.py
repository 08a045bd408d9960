"""Speed benchmark of PFNet (``python -m bench``); see :mod:`bench.run`."""
