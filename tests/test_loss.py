"""Loss formulas against values computed by hand (math module, no torch losses)."""
import math

import pytest
import torch
from torch import nn

from loss import JointEdgeSegLoss, OhemCrossEntropy, SegOnlyLoss, class_balanced_bce, get_loss


def logits_from_probs(probs_per_pixel):
    """(H*W) lists of class probabilities -> (1, K, 1, H*W) logits whose softmax is exactly those."""
    probs = torch.tensor(probs_per_pixel, dtype=torch.float64).T  # (K, P)
    return probs.log().float().reshape(1, probs.shape[0], 1, probs.shape[1])


# Four pixels, three classes; true classes 0, 1, 2 and one ignored pixel.
PROBS = [[0.9, 0.05, 0.05], [0.3, 0.5, 0.2], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]]
TARGET = torch.tensor([[[0, 1, 2, 255]]])


@pytest.mark.parametrize(
    ("min_kept", "kept_true_probs"),
    [
        (1, [0.5, 0.2]),  # 1st smallest is 0.2 < 0.7: threshold stays 0.7
        (0, [0.5, 0.2]),  # no minimum: threshold 0.7
        (3, [0.9, 0.5, 0.2]),  # 3rd smallest is 0.9 > 0.7: threshold rises to 0.9
        (4, [0.9, 0.5, 0.2]),  # more than the 3 labelled pixels: all labelled pixels are used
    ],
)
def test_ohem_keeps_the_hard_pixels(min_kept, kept_true_probs):
    criterion = OhemCrossEntropy(ignore_index=255, thresh=0.7, min_kept=min_kept)
    loss = criterion(logits_from_probs(PROBS), TARGET)
    expected = sum(-math.log(p) for p in kept_true_probs) / len(kept_true_probs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_gradient_only_through_kept_pixels():
    logits = logits_from_probs(PROBS).requires_grad_(True)
    OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, TARGET).backward()
    touched = logits.grad.abs().sum(dim=1).flatten().tolist()
    assert touched[0] == 0.0 and touched[3] == 0.0
    assert touched[1] > 0.0 and touched[2] > 0.0


def test_ohem_without_labelled_pixels_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = OhemCrossEntropy()(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_ohem_with_few_labels_equals_plain_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=generator)
    target = torch.randint(0, 5, (2, 8, 8), generator=generator)
    target[0, :2] = 255
    expected = nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    assert OhemCrossEntropy(min_kept=10000)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def softplus(x):
    return math.log1p(math.exp(x))


def test_class_balanced_bce_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 255.0]]]])
    # one edge pixel, two background pixels, one ignored: weights 2/3, 1/3, 1/3, 0; mean over 4 pixels
    expected = (2 / 3 * softplus(-0.0) + 1 / 3 * softplus(2.0) + 1 / 3 * softplus(-1.0)) / 4
    assert class_balanced_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_class_balanced_bce_weights_come_from_the_whole_batch():
    logits = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.25]]]])
    target = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]])  # (N, H, W): image 0 all edge, image 1 none
    # over the batch: 2 edge, 2 background pixels -> both weights 1/2 (per image they would be 0)
    expected = 0.5 * (softplus(-1.0) + softplus(2.0) + softplus(0.5) + softplus(0.25)) / 4
    assert class_balanced_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_class_balanced_bce_all_ignored_is_zero():
    assert class_balanced_bce(torch.randn(1, 1, 3, 3), torch.full((1, 1, 3, 3), 255.0)).item() == 0.0


def test_joint_edge_loss_terms_and_weights():
    logits = logits_from_probs(PROBS)
    edge_target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    edge_logits = [torch.full((1, 1, 1, 4), value) for value in (1.0, 2.0, 3.0)]  # coarsest first
    criterion = JointEdgeSegLoss(nn.CrossEntropyLoss(ignore_index=255), edge_weight=25.0, seg_weight=2.0)
    losses = criterion((logits, edge_logits), TARGET, edge_target)
    assert list(losses) == ["seg_loss", "edge_loss_layer3", "edge_loss_layer2", "edge_loss_layer1"]
    seg_expected = 2.0 * (-math.log(0.9) - math.log(0.5) - math.log(0.2)) / 3
    assert losses["seg_loss"].item() == pytest.approx(seg_expected, rel=1e-5)
    for name, value in zip(["edge_loss_layer3", "edge_loss_layer2", "edge_loss_layer1"], (1.0, 2.0, 3.0)):
        # 1 edge pixel (weight 3/4), 3 background pixels (weight 1/4)
        expected = 25.0 * (0.75 * softplus(-value) + 3 * 0.25 * softplus(value)) / 4
        assert losses[name].item() == pytest.approx(expected, rel=1e-6)


def test_joint_edge_loss_needs_the_edge_target():
    criterion = JointEdgeSegLoss(nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="with_edge=True"):
        criterion((torch.zeros(1, 2, 2, 2), [torch.zeros(1, 1, 2, 2)]), torch.zeros(1, 2, 2, dtype=torch.long))


def test_get_loss_follows_the_flags():
    train_criterion, val_criterion = get_loss(joint_edge_loss_pfnet=True, ohem=True, edge_weight=25.0)
    assert isinstance(train_criterion, JointEdgeSegLoss)
    assert isinstance(train_criterion.seg_loss, OhemCrossEntropy)
    assert train_criterion.seg_loss.thresh == 0.7 and train_criterion.seg_loss.min_kept == 10000
    assert train_criterion.edge_weight == 25.0
    assert val_criterion.reduction == "sum" and val_criterion.ignore_index == 255
    plain, _ = get_loss(joint_edge_loss_pfnet=False, ohem=False)
    assert isinstance(plain, SegOnlyLoss) and isinstance(plain.seg_loss, nn.CrossEntropyLoss)
    outputs = (logits_from_probs(PROBS), [torch.zeros(1, 1, 1, 4)])
    expected = (-math.log(0.9) - math.log(0.5) - math.log(0.2)) / 3
    assert plain(outputs, TARGET)["seg_loss"].item() == pytest.approx(expected, rel=1e-5)
