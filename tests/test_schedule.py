"""LR schedule against the original's formulas, stepped at the top of every epoch as its train.py does."""
import math
import warnings

import pytest
from torch import nn

from engine.optim import build_scheduler, build_sgd, lr_factor, lr_of_epoch


def lrs_per_epoch(schedule, base_lr, max_epoch, **options):
    """Run the original's loop shape: scheduler.step() at the top of each epoch, then train at that LR."""
    model = nn.Linear(2, 2)
    optimizer = build_sgd(model, lr=base_lr)
    scheduler = build_scheduler(optimizer, lr_factor(schedule, max_epoch=max_epoch, **options))
    trained_at = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # step() before optimizer.step(): deliberate here
        for _ in range(max_epoch):
            scheduler.step()
            trained_at.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
    return trained_at


def test_isaid_recipe_lrs_match_the_published_schedule():
    # lr 0.007, 16 epochs, poly 0.9: the LRs the original's iSAID run trained at (SPEC 4.3)
    published = [0.006605, 0.006207, 0.005807, 0.005403, 0.004996, 0.004586, 0.004171, 0.003751,
                 0.003326, 0.002896, 0.002457, 0.002010, 0.001552, 0.001077, 0.000577, 0.0]
    got = lrs_per_epoch("poly", 0.007, 16, poly_exp=0.9)
    assert [round(lr, 6) for lr in got] == published


def test_poly_by_formula_ignores_repoly_and_rescale():
    base_lr, max_epoch, poly_exp = 0.01, 7, 0.9
    got = lrs_per_epoch("poly", base_lr, max_epoch, poly_exp=poly_exp, rescale=0.3, repoly=3.0, rescale_epoch=2)
    expected = [base_lr * math.pow(1 - (e + 1) / max_epoch, poly_exp) for e in range(max_epoch)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_scl_poly_by_formula_with_repoly_and_rescale():
    base_lr, max_epoch, poly_exp, threshold, rescale, repoly = 0.02, 10, 0.9, 4, 0.5, 1.5

    def factor(epoch):
        if epoch < threshold:
            return math.pow(1 - epoch / max_epoch, poly_exp)
        return rescale * math.pow(1 - (epoch - threshold) / (max_epoch - threshold), repoly)

    got = lrs_per_epoch("scl-poly", base_lr, max_epoch, poly_exp=poly_exp, rescale_epoch=threshold,
                        rescale=rescale, repoly=repoly)
    expected = [base_lr * factor(e + 1) for e in range(max_epoch)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got[3] == pytest.approx(base_lr * 0.5)  # epoch 3 trains at factor(4) = rescale * 1
    factor_fn = lr_factor("scl-poly", max_epoch=max_epoch, poly_exp=poly_exp, rescale_epoch=threshold,
                          rescale=rescale, repoly=repoly)
    assert [lr_of_epoch(base_lr, factor_fn, e) for e in range(max_epoch)] == pytest.approx(expected)


def test_scl_poly_needs_the_rescale_epoch():
    with pytest.raises(ValueError, match="rlx_off_epoch"):
        lr_factor("scl-poly", max_epoch=10, poly_exp=0.9)
    with pytest.raises(ValueError, match="unknown --lr_schedule"):
        lr_factor("cosine", max_epoch=10, poly_exp=0.9)


def test_scheduler_state_round_trip_continues_the_schedule():
    factor = lr_factor("scl-poly", max_epoch=6, poly_exp=0.9, rescale_epoch=3, rescale=0.7, repoly=2.0)
    optimizer = build_sgd(nn.Linear(2, 2), lr=0.1)
    scheduler = build_scheduler(optimizer, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(3):
            scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_sgd(nn.Linear(2, 2), lr=0.1)
    fresh = build_scheduler(fresh_optimizer, factor)
    fresh.load_state_dict(state)
    scheduler.step()
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor(4))
    assert fresh.last_epoch == 4
