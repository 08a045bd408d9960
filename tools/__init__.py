"""Data preparation tools: raw downloads -> patch folders (see README, "Data preparation").

Each script runs from the repository root (``python tools/prepare_dataset.py --help``) and is also
importable: ``tools.prepare_dataset.prepare``, ``tools.make_synthetic_data.make_synthetic``,
``tools.split_iSAID.split_isaid``, ``tools.split_isprs.split_isprs``,
``tools.convert_iSAID_mask2graymask.convert_isaid_masks``,
``tools.convert_isprs_mask2graymask.convert_isprs_masks``.
"""
