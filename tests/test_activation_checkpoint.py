"""Activation checkpointing: same step, same keys, fewer saved activations."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import network
from network.activation_checkpoint import CheckpointedSequential

pytestmark = pytest.mark.usefixtures("one_thread")


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """One forward/backward; returns the loss and the bytes of activations (not parameters) kept for the
    backward pass."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, edge_logits = model(images)
        loss = F.cross_entropy(logits, labels) + sum(e.sigmoid().mean() for e in edge_logits)
    loss.backward()
    return loss.item(), sum(storages.values())


@pytest.fixture(scope="module")
def plain_and_checkpointed():
    torch.manual_seed(0)
    plain = network.get_model("pfnet_r50", 6, maxpool_size=4, avgpool_size=3, edge_points=16).train()
    checkpointed = network.enable_activation_checkpointing(copy.deepcopy(plain))
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 6, (2, 96, 96), generator=torch.Generator().manual_seed(2))
    results = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        torch.manual_seed(3)  # the same Dropout2d mask in the PSP module
        results[name] = train_step(model, images, labels)
    return plain, checkpointed, results


def test_step_is_unchanged(plain_and_checkpointed):
    plain, checkpointed, results = plain_and_checkpointed
    assert isinstance(checkpointed.layer0, CheckpointedSequential)
    assert isinstance(checkpointed.layer2, CheckpointedSequential)
    assert isinstance(checkpointed.layer3, CheckpointedSequential)
    assert not isinstance(checkpointed.layer4, CheckpointedSequential)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    assert results["checkpointed"][0] == pytest.approx(results["plain"][0], rel=1e-6)
    for (name, p_plain), p_ckpt in zip(plain.named_parameters(), checkpointed.parameters()):
        scale = p_plain.grad.abs().max().item() + 1e-12
        assert (p_ckpt.grad - p_plain.grad).abs().max().item() <= 1e-4 * scale, name
    # Running statistics saw the batch once (a recomputation that updated them would move them further).
    for (name, b_plain), b_ckpt in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.allclose(b_ckpt.float(), b_plain.float(), rtol=1e-5, atol=1e-6), name
    assert checkpointed.layer0[1].num_batches_tracked.item() == 1


def test_fewer_activations_are_kept(plain_and_checkpointed):
    _, _, results = plain_and_checkpointed
    plain_bytes, checkpointed_bytes = results["plain"][1], results["checkpointed"][1]
    assert checkpointed_bytes < 0.75 * plain_bytes


def test_eval_mode_and_bad_stage():
    model = network.enable_activation_checkpointing(network.get_model("pfnet_r50", 6).eval())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)
    with pytest.raises(ValueError, match="head"):
        network.enable_activation_checkpointing(model, ("head",))
