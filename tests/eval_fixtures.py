"""Shared helpers for the evaluation/prediction tests: a real PFNet whose predictions vary, test images."""
import numpy as np
import torch

import network
from utils.checkpoint import save_checkpoint


def blocky_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3): a few flat coloured rectangles plus noise, so a random PFNet predicts several classes."""
    pixels = np.zeros((height, width, 3))
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        pixels[top : top + rng.integers(8, 30), left : left + rng.integers(8, 30)] = rng.integers(0, 256, 3)
    return np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)


def calibrated_pfnet(num_classes: int, seed: int = 0, **options) -> torch.nn.Module:
    """PFNet-R50 (``options`` for ``network.get_model``) with random weights whose BatchNorm statistics were
    set on blocky images (eval mode).

    With the default statistics (mean 0, variance 1) a random PFNet predicts one class almost everywhere,
    which would make comparisons of predictions weak.
    """
    torch.manual_seed(seed)
    model = network.get_model("pfnet_r50", num_classes, **options)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            batch = np.stack([blocky_image(rng, 64, 64) for _ in range(2)]).astype(np.float32) / 255
            model(torch.from_numpy(((batch - mean) / std).transpose(0, 3, 1, 2).copy()))
    return model.eval()


def assert_clear_decisions_match(ids: np.ndarray, logits: torch.Tensor, relative_tolerance: float = 1e-4) -> None:
    """Assert class ids ``(H, W)`` equal the argmax of reference ``logits (K, H, W)`` wherever it is clear.

    eval.py and predict.py run ``network.optimize_for_inference`` by default: folded batch-norms and split
    convolutions round differently, within ``relative_tolerance × max|logits|`` of the plain model (the parity
    bound). A pixel whose reference top-1/top-2 gap is under twice that bound may therefore flip; every other
    pixel must agree, and near-ties must stay rare (under 1%) or the comparison would say little.
    """
    logits = logits.float()
    bound = relative_tolerance * float(logits.abs().max())
    top2 = logits.topk(2, dim=0).values
    clear = ((top2[0] - top2[1]) > 2 * bound).numpy()
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(ids[clear], logits.argmax(0).numpy()[clear])


def calibrated_checkpoint(folder, num_classes: int) -> tuple[torch.nn.Module, object]:
    """(:func:`calibrated_pfnet` model, path of its checkpoint ``folder/model.pth`` as save_checkpoint writes it)."""
    model = calibrated_pfnet(num_classes)
    path = folder / "model.pth"
    save_checkpoint(path, {"state_dict": model.state_dict(), "epoch": 3, "mean_iu": 0.5, "command": "test"})
    return model, path
