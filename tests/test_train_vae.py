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


def test_large_models_on_the_cpu_update_their_parameters_tensor_by_tensor(monkeypatch):
    # foreach's whole-model temporaries (2.6 GB at CelebA-HQ-256's 322 M parameters) ran a CPU smoke out
    # of memory; below the bound the faster multi-tensor update stays, and both compute the same step.
    import torch

    from ncp import train_vae
    from ncp.config import ExperimentConfig
    from ncp.params import resolve_params

    train = ExperimentConfig.from_params(resolve_params({})).vae.train
    steps = {}
    for bound in (10**9, 10):  # the same small model, as a "small" and as a "large" one
        monkeypatch.setattr(train_vae, "FOREACH_MAX_CPU_PARAMETERS", bound)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        optimizer = train_vae.build_optimizer(model, train)
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        steps[optimizer.defaults["foreach"]] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert set(steps) == {True, False}
    torch.testing.assert_close(steps[True], steps[False])
