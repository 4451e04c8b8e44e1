"""NVAE backbone: identical to the public NVAE on reference fixtures, NVAE's state-dict layout for the
paper's configurations, the LatentVAE contract, likelihoods against hand computations, regularisers,
and the safe checkpoint loader."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import pytest
import torch
from tiny_nvae import TINY_NVAE_ARGS

from ncp.models.base import sample_from_prior
from ncp.models.nvae import (
    NVAE,
    NVAEConfig,
    balanced_kl,
    kl_balance_alpha,
    kl_balance_coefficients,
    load_nvae_checkpoint,
    readjust_batchnorm,
)
from ncp.models.nvae.distributions import DiscretizedLogisticMixture
from ncp.models.nvae.layers import PlainConv2d, WeightNormConv2d

torch.set_num_threads(1)
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "nvae"
TINY_MNIST_ARGS = {"dataset": "mnist", **TINY_NVAE_ARGS}


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"NVAE reference fixture {path} is absent")
    return path


def reference_model(name: str) -> tuple[NVAE, dict]:
    """The fixture's model, loaded strictly, in eval mode, with its recorded inputs and outputs."""
    args = json.loads(fixture(f"{name}_args.json").read_text())["args"]
    state_dict = torch.load(fixture(f"{name}_state_dict.pt"), weights_only=True)["state_dict"]
    model, dropped = NVAE.from_official_args(args)  # the fixture's args hold a training flag too
    assert dropped == ["weight_decay_norm"]
    assert list(model.state_dict()) == list(state_dict), "parameter names or order differ from NVAE's"
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), torch.load(fixture(f"{name}_io.pt"), weights_only=True)


def assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    """allclose with rtol 1e-4 and atol 1e-5 of the reference's scale; returns max |diff| / max |ref|."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    return (actual - expected).abs().max().item() / scale


@pytest.mark.parametrize("name, num_groups", [("mnist_tiny", 4), ("cifar10_tiny_nf", 3)])
def test_forward_and_sampling_match_reference_nvae(name: str, num_groups: int) -> None:
    model, io = reference_model(name)
    assert model.num_groups == num_groups
    with torch.no_grad():
        output = model(io["x"], noise_scale=0.0)
        samples = model.sample(3, temperature=0.0)
    errors = {
        "logits": assert_matches("logits", output.logits, io["logits"]),
        "log_q": assert_matches("log_q", output.log_q, io["log_q"]),
        "log_p": assert_matches("log_p", output.log_p, io["log_p"]),
        "kl_all": assert_matches("kl_all", output.kl, io["kl_all"]),
        "sample_t0": assert_matches("sample_t0", samples, io["sample_t0_logits"]),
    }
    print(name, {key: f"{value:.2e}" for key, value in errors.items()})


def test_walk_prior_with_mean_choice_is_temperature_zero_sampling() -> None:
    model, io = reference_model("mnist_tiny")
    with torch.no_grad():
        walk = model.walk_prior(3, lambda k, prior, context: prior.mean, temperature=1.0)
    assert_matches("walk_prior(mean)", walk.logits, io["sample_t0_logits"])
    assert [tuple(z.shape[1:]) for z in walk.latents] == model.group_shapes()
    assert [None if c is None else tuple(c.shape[1:]) for c in walk.contexts] == model.context_shapes()
    with pytest.raises(ValueError, match="group 0"):
        model.walk_prior(2, lambda k, prior, context: torch.zeros(2, 1), temperature=1.0)


def test_forward_follows_the_latent_contract() -> None:
    torch.manual_seed(0)
    model = NVAE.from_args({**TINY_MNIST_ARGS, "num_nf": 1})
    x = torch.bernoulli(torch.full((3, 1, 32, 32), 0.3))
    output = model(x)  # train mode, noise_scale 1
    # 32 px / 2^(1 pre-process block + 2 scales - 1) = 8 px at the coarsest scale, 8 * 4 = 32 channels there
    assert model.group_shapes() == [(4, 8, 8), (4, 8, 8), (4, 16, 16), (4, 16, 16)]  # coarsest scale first
    assert model.context_shapes() == [None, (32, 8, 8), (16, 16, 16), (16, 16, 16)]
    assert [tuple(z.shape) for z in output.latents] == [(3, *s) for s in model.group_shapes()]
    assert output.contexts[0] is None
    assert [tuple(c.shape[1:]) for c in output.contexts[1:]] == model.context_shapes()[1:]
    assert output.kl.shape == (3, 4) and output.log_q.shape == (3,)
    # the priors handed out are the ones log_p was computed with, at the latents handed out
    log_p = sum(prior.log_prob(z) for prior, z in zip(output.priors, output.latents))
    torch.testing.assert_close(log_p, output.log_p)
    assert all(prior.batch_shape == (3,) for prior in output.priors)
    # with flows, NVAE's KL is the single-sample estimate log q - log p
    torch.testing.assert_close(output.kl.sum(dim=1), output.log_q - output.log_p, rtol=1e-5, atol=1e-3)
    # group 0's prior is NVAE's "standard" Normal: mean 0, std exp(0) + 0.01
    torch.testing.assert_close(output.priors[0].base_dist.scale, torch.full((3, 4, 8, 8), 1.01))
    # a training step works on the CPU and reaches the learned top-down input
    loss = (-model.log_px(output.logits, x) + output.kl.sum(1)).mean()
    loss.backward()
    assert torch.isfinite(model.prior_ftr0.grad).all() and model.prior_ftr0.grad.abs().sum() > 0


def test_noise_scale_zero_uses_posterior_means() -> None:
    torch.manual_seed(1)
    model = NVAE.from_args(TINY_MNIST_ARGS).eval()
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.5))
    with torch.no_grad():
        first, second = model(x, noise_scale=0.0), model(x, noise_scale=0.0)
        noisy = model(x, noise_scale=1.0)
    torch.testing.assert_close(first.latents[0], second.latents[0], rtol=0, atol=0)
    assert not torch.allclose(first.latents[0], noisy.latents[0])


def test_log_px_bernoulli_is_the_cropped_binary_log_likelihood() -> None:
    torch.manual_seed(2)
    model = NVAE.from_args(TINY_MNIST_ARGS)
    logits = torch.randn(2, 1, 32, 32)
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.5))
    p = torch.sigmoid(logits)[:, :, 2:30, 2:30].double()
    inner = x[:, :, 2:30, 2:30].double()
    expected = (inner * torch.log(p) + (1 - inner) * torch.log(1 - p)).sum(dim=[1, 2, 3])
    torch.testing.assert_close(model.log_px(logits, x).double(), expected, rtol=1e-5, atol=1e-3)
    border_changed = x.clone()
    border_changed[:, :, :2] = 1 - border_changed[:, :, :2]  # NVAE scores only the central 28x28
    torch.testing.assert_close(model.log_px(logits, border_changed), model.log_px(logits, x))
    torch.testing.assert_close(model.mean_image(logits), torch.sigmoid(logits))


def test_logistic_mixture_is_a_distribution_over_5_bit_rgb() -> None:
    torch.manual_seed(3)
    num_mix, levels = 3, 32
    params = torch.randn(1, 10 * num_mix, 1, 1)
    values = torch.arange(levels, dtype=torch.float32) / (levels - 1)
    rgb = torch.tensor(list(itertools.product(values.tolist(), repeat=3)))  # (32^3, 3)
    mixture = DiscretizedLogisticMixture(params.expand(len(rgb), -1, -1, -1), num_mix, num_bits=5)
    log_probs = mixture.log_prob(rgb.view(-1, 3, 1, 1))  # (32^3, 1, 1)
    assert abs(torch.logsumexp(log_probs.flatten().double(), 0).item()) < 1e-4
    mean = DiscretizedLogisticMixture(params, num_mix).mean()
    assert mean.shape == (1, 3, 1, 1) and 0.0 <= mean.min() and mean.max() <= 1.0


def test_paper_configurations_have_nvae_state_dict_layout() -> None:
    paper = json.loads(fixture("nvae_paper_state_dict_shapes.json").read_text())
    for dataset, reference in paper.items():
        with torch.device("meta"):
            model, _ = NVAE.from_official_args(reference["args"])
        shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
        assert list(shapes) == list(reference["state_dict"]), f"{dataset}: names or order differ"
        assert shapes == reference["state_dict"], f"{dataset}: shapes differ"
        assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"], dataset


def test_config_reads_nvae_args_and_overrides() -> None:
    config = NVAEConfig.from_args(
        {
            "dataset": "celeba_64",
            "num_latent_scales": 3,
            "num_groups_per_scale": 20,
            "ada_groups": True,
            "num_preprocess_blocks": 1,
            "num_postprocess_blocks": 1,
        }
    )
    assert config.groups_per_scale == (20, 10, 5) and config.num_groups == 35
    assert (config.input_size, config.input_channels, config.likelihood) == (64, 3, "dmol")
    assert (
        NVAEConfig.from_args(
            {
                "dataset": "cifar10",
                "num_mixture_dec": 1,
                "num_preprocess_blocks": 1,
                "num_postprocess_blocks": 1,
            }
        ).likelihood
        == "normal"
    )
    ours = NVAE.from_args(
        {
            **TINY_MNIST_ARGS,
            "dataset": "binary_digits",
            "input_size": 32,
            "input_channels": 1,
            "likelihood": "bernoulli",
            "likelihood_crop": 0,
        }
    )
    assert ours.config.likelihood_crop == 0 and ours.args["dataset"] == "binary_digits"
    assert NVAE.from_args(ours.args).config == ours.config  # model.args rebuilds the model
    with pytest.raises(ValueError, match="unknown NVAE dataset"):
        NVAEConfig.from_args({"dataset": "my_faces"})
    with pytest.raises(ValueError, match="3 input channels"):
        NVAEConfig.from_args({"dataset": "mnist", "likelihood": "dmol"})
    with pytest.raises(ValueError, match="num_postprocess_blocks"):
        NVAEConfig.from_args({"dataset": "cifar10", "num_preprocess_blocks": 1})
    with pytest.raises(ValueError, match="expects images"):
        ours(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ours(torch.full((2, 1, 32, 32), 2.0))


def test_unknown_nvae_args_are_errors_and_only_official_args_drop_training_flags() -> None:
    # A typo must not fall back to NVAE's default (10 groups per scale) silently.
    with pytest.raises(ValueError, match="unknown NVAE argument.*num_groups_per_scal\\b"):
        NVAE.from_args({**TINY_MNIST_ARGS, "num_groups_per_scal": 3})
    with pytest.raises(ValueError, match="unknown NVAE argument.*batch_size"):
        NVAEConfig.from_args({**TINY_MNIST_ARGS, "batch_size": 200})
    official = {**TINY_MNIST_ARGS, "batch_size": 200, "learning_rate": 1e-2, "save": "/tmp/exp"}
    model, dropped = NVAE.from_official_args(official)
    assert dropped == ["batch_size", "learning_rate", "save"]
    assert model.config == NVAE.from_args(TINY_MNIST_ARGS).config and "batch_size" not in model.args


def test_kl_balancing_matches_nvae_square_scheme() -> None:
    # CelebA-64: 5, 10, 20 groups at 8, 16, 32 px -> alpha 1, 2, 4 per scale (4^i / groups, min 1)
    alpha = kl_balance_alpha([5, 10, 20])
    assert alpha.tolist() == [1.0] * 5 + [2.0] * 10 + [4.0] * 20
    kl = torch.tensor([[1.0, 4.0], [3.0, -2.0]])  # (B, K)
    gamma = kl_balance_coefficients(kl, torch.tensor([1.0, 2.0]))
    raw = torch.tensor([2.01 / 1.0, 3.01 / 2.0])  # (mean |KL| + 0.01) / alpha
    torch.testing.assert_close(gamma, raw / raw.mean())
    torch.testing.assert_close(balanced_kl(kl, torch.tensor([1.0, 2.0]), beta=0.5), (kl * gamma).sum(1))
    torch.testing.assert_close(balanced_kl(kl, torch.tensor([1.0, 2.0]), beta=1.0), kl.sum(1))
    assert NVAE.from_args(TINY_MNIST_ARGS).kl_alpha().tolist() == [1.0, 1.0, 4.0, 4.0]


def test_spectral_and_batchnorm_regularisers() -> None:
    torch.manual_seed(4)
    model = NVAE.from_args(TINY_MNIST_ARGS)
    convs = [m for m in model.modules() if isinstance(m, (WeightNormConv2d, PlainConv2d))]
    exact = sum(
        torch.linalg.matrix_norm(m.normalized_weight().reshape(m.weight.size(0), -1), ord=2) for m in convs
    )
    for _ in range(20):  # the power-iteration vectors persist across calls and converge
        estimate = model.spectral_loss()
    assert abs(estimate.item() - exact.item()) < 1e-3 * exact.item()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        torch.nn.init.uniform_(bn.weight, -2.0, 2.0)
    expected = sum(bn.weight.abs().max() for bn in bns)
    torch.testing.assert_close(model.batchnorm_loss(), expected)


def test_readjust_batchnorm_updates_decoder_statistics_only() -> None:
    torch.manual_seed(5)
    model = NVAE.from_args(TINY_MNIST_ARGS).eval()
    encoder_bn = model.pre_process[0]._ops[0].bn_act
    decoder_bn = model.post_process[0]._ops[0].conv[1].bn  # after the nearest-upsampling layer
    before_enc, before_dec = encoder_bn.running_mean.clone(), decoder_bn.running_mean.clone()
    readjust_batchnorm(model, temperature=0.7, num_passes=2, batch_size=4)
    assert not model.training
    assert torch.equal(encoder_bn.running_mean, before_enc)
    assert not torch.equal(decoder_bn.running_mean, before_dec)


def test_checkpoint_round_trip_with_namespace_args(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = NVAE.from_args(TINY_MNIST_ARGS).eval()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-2, eps=1e-3)
    model.spectral_loss().backward()
    optimizer.step()
    args = argparse.Namespace(**TINY_MNIST_ARGS, save="/tmp/eval-exp", batch_size=200, learning_rate=1e-2)
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "epoch": 3,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "global_step": 10,
            "args": args,
            "arch_instance": {"normal_enc": ["res_bnswish"]},
        },
        path,
    )
    loaded_args, state_dict = load_nvae_checkpoint(path)
    assert loaded_args == vars(args)
    assert any(name.endswith("weight_normalized") for name in state_dict)  # NVAE's alias entries
    restored = NVAE.from_checkpoint(path)
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.5))
    with torch.no_grad():
        torch.testing.assert_close(restored(x, noise_scale=0.0).logits, model(x, noise_scale=0.0).logits)


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loader_rejects_unsafe_and_foreign_files(tmp_path: Path) -> None:
    marker = tmp_path / "exploited"
    malicious = tmp_path / "malicious.pt"
    torch.save({"state_dict": {}, "args": _Exploit(marker)}, malicious)
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_nvae_checkpoint(malicious)
    assert not marker.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable NVAE checkpoint"):
        load_nvae_checkpoint(garbage)
    weights_only = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, weights_only)
    with pytest.raises(ValueError, match="'state_dict' and 'args'"):
        load_nvae_checkpoint(weights_only)
    with pytest.raises(ValueError, match="does not exist"):
        load_nvae_checkpoint(tmp_path / "missing.pt")


def test_sampling_runs_for_every_likelihood() -> None:
    torch.manual_seed(7)
    for likelihood, channels in [("bernoulli", 1), ("dmol", 3), ("normal", 3)]:
        args = {
            **TINY_MNIST_ARGS,
            "dataset": "toy",
            "input_size": 16,
            "input_channels": channels,
            "likelihood": likelihood,
            "num_mixture_dec": 2,
            "num_latent_scales": 1,
        }
        model = NVAE.from_args(args).eval()
        with torch.no_grad():
            walk = model.walk_prior(2, sample_from_prior, temperature=0.8)
            images = model.mean_image(walk.logits)
            log_px = model.log_px(walk.logits, model.sample_image(walk.logits))
            at_zero = model.sample(1, temperature=0.0)
        assert images.shape == (2, channels, 16, 16) and 0 <= images.min() and images.max() <= 1
        assert log_px.shape == (2,) and torch.isfinite(log_px).all()
        assert at_zero.shape == (1, model.config.output_channels, 16, 16) and torch.isfinite(at_zero).all()


def test_depthwise_conv_gradients_match_torchs_and_channels_last_steps_match_nchw(monkeypatch) -> None:
    # _DepthwiseConv2d computes the weight gradient on channels-last copies (a CPU speed-up); a wrong
    # index order or a dropped bias gradient there would train a different model than NVAE's
    from ncp.models.nvae import layers
    from ncp.models.nvae.layers import PlainConv2d

    torch.manual_seed(0)
    conv = PlainConv2d(6, 6, 5, stride=2, padding=2, groups=6, bias=True).double()
    x = torch.randn(3, 6, 9, 9, dtype=torch.double, requires_grad=True)
    grads = torch.autograd.grad(conv(x).square().sum(), [x, conv.weight, conv.bias])
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, 2, 1, 6)
    expected = torch.autograd.grad(plain.square().sum(), [x, conv.weight, conv.bias])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    # stride 1, wide layers on maps of at most SMALL_MAP_PIXELS: the weight gradient is summed tap by tap;
    # non-square maps and kernels, both layouts (a swapped tap index or padding side would show here)
    wide = layers.WIDE_LAYER_CHANNELS
    by_taps = []
    real_taps = layers._weight_grad_by_taps
    monkeypatch.setattr(layers, "_weight_grad_by_taps", lambda *a: by_taps.append(1) or real_taps(*a))
    for kernel, padding, size in (
        ((5, 5), (2, 2), (4, 6)),
        ((3, 5), (1, 2), (8, 8)),
        ((5, 5), (1, 2), (7, 3)),
    ):
        conv = PlainConv2d(wide, wide, kernel, stride=1, padding=padding, groups=wide, bias=True).double()
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, wide, *size, dtype=torch.double).contiguous(memory_format=memory_format)
            x.requires_grad_(True)
            grads = torch.autograd.grad(conv(x).square().sum(), [x, conv.weight, conv.bias])
            plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, padding, 1, wide)
            expected = torch.autograd.grad(plain.square().sum(), [x, conv.weight, conv.bias])
            for got, want in zip(grads, expected):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert len(by_taps) == 6  # every case above took the tap-by-tap path

    # stage 1 trains NVAE in channels-last on the CPU: the same loss and gradients as NCHW (noise 0:
    # randn_like fills a channels-last tensor in memory order, so noisy draws differ per element)
    model = NVAE.from_args(TINY_MNIST_ARGS).train()
    x = torch.rand(4, 1, 32, 32).round()
    losses, gradients = [], []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        model = model.to(memory_format=memory_format)
        model.zero_grad()
        out = model(x.contiguous(memory_format=memory_format), noise_scale=0.0)
        loss = (-model.log_px(out.logits, x) + out.kl.sum(1)).mean()
        loss.backward()
        losses.append(loss.detach())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-3, atol=1e-4)
