"""Data preparation tools: raw downloads -> patch folders (see docs/data.md).

Each script runs from the repository root (``python tools/prepare_dataset.py --help``) and is also
importable: ``tools.prepare_dataset.prepare`` (settings in ``tools.prepare_dataset.PrepareOptions``),
``tools.make_synthetic_data.make_synthetic``, ``tools.split_iSAID.split_isaid``, ``tools.split_isprs.split_isprs``,
``tools.convert_iSAID_mask2graymask.convert_isaid_masks``,
``tools.convert_isprs_mask2graymask.convert_isprs_masks``.

Their public error types are importable from here: :class:`ToolError` (a run that cannot start, or that
stopped at bad input) and :class:`InputError` (one bad input file).
"""
from tools._errors import InputError, ToolError

__all__ = ["InputError", "ToolError"]
