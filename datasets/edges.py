"""Boundary targets for the PFNet edge loss, computed as the original datasets do."""

import cv2
import numpy as np


def boundary_target(mask: np.ndarray, thickness: int = 8) -> np.ndarray:
    """Edge map of a label mask: the outline of its non-zero region drawn ``thickness`` pixels wide.

    As in the original ``get_boundary``: the mask is cast to uint8 and handed to
    ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``, which treats every non-zero label as
    foreground (255 padding included), and all contours are drawn with value 1 and the given thickness.
    A border between two different non-zero classes is therefore not an edge (for iSAID the target is
    the outline of the objects against background; for ISPRS against impervious surfaces).

    Args:
        mask: (H, W) integer label ids (0..K-1, 255 = ignore).
        thickness: line width of the drawn contours in pixels (the original's ``--thicky``, default 8).

    Returns:
        (H, W) float32 array with values in {0, 1}.
    """
    labels = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(labels, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    edges = np.zeros_like(labels)
    cv2.drawContours(edges, contours, -1, 1, thickness)
    return edges.astype(np.float32)
