"""Stage-1 schedules against their closed forms (NVAE train.py / utils.py)."""

import math

import pytest

from ncp.train_vae import kl_weight, learning_rate


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    lr, lr_min, warmup, total = 1e-2, 1e-4, 10, 110
    assert learning_rate(0, total, warmup, lr, lr_min) == pytest.approx(lr / warmup)
    assert learning_rate(9, total, warmup, lr, lr_min) == pytest.approx(lr)
    assert learning_rate(10, total, warmup, lr, lr_min) == pytest.approx(lr)
    midway = learning_rate(60, total, warmup, lr, lr_min)
    assert midway == pytest.approx(lr_min + 0.5 * (lr - lr_min))  # cos(pi/2) = 0
    assert learning_rate(total, total, warmup, lr, lr_min) == pytest.approx(lr_min)


def test_kl_weight_ramps_from_its_floor_to_one():
    total = 1000
    assert kl_weight(0, total, 0.3, 1e-4, 1e-4) == pytest.approx(1e-4)
    assert kl_weight(150, total, 0.3, 0.0, 1e-4) == pytest.approx(0.5)
    assert kl_weight(300, total, 0.3, 0.0, 1e-4) == 1.0
    assert kl_weight(900, total, 0.3, 0.0, 1e-4) == 1.0
    assert kl_weight(5, total, 0.0, 0.0, 1e-4) == 1.0
    assert math.isclose(kl_weight(100, total, 0.3, 0.1, 1e-4), 1e-4)  # still in the constant phase
