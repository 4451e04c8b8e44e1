"""What the stages ask of every backbone (ncp.models.base.LatentVAE) instead of checking which one it
is: the typed config from params, data-dependent initialisation, the KL term, the regulariser, the
scored dimensions, the preparation for low-temperature sampling and the one-group pass a stream-mode NCE
job draws its pairs with. Each is checked on NVAE, the MLP VAE
and the conv VAE against a known answer, so a backbone that gets one wrong fails here by name."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_nvae import TINY_NVAE_ARGS

from ncp.models.nvae.regularizers import kl_balance_coefficients
from ncp.models.registry import ARCHES, backbone_class, backbone_config, build_vae

torch.set_num_threads(1)

# Tiny versions of each backbone on 1x32x32 binary images, as their params sections would give them.
SECTIONS = {
    "nvae": dict(TINY_NVAE_ARGS),
    "mlp": {"latent_dim": 4, "hidden": 16},
    "conv": {
        "image_size": 32,
        "in_channels": 1,
        "latent_dim": 4,
        "channels": [8, 16],
        "likelihood": "bernoulli",
    },
}


def tiny(arch: str) -> torch.nn.Module:
    """The tiny backbone, built as stage 1 builds it: typed config from params, then its arch args."""
    torch.manual_seed(0)
    config = backbone_config(arch, SECTIONS[arch], "mnist5k")
    return build_vae(arch, dataclasses.asdict(config))


def binary_images(num_images: int) -> torch.Tensor:
    """Binary 1x32x32 images with a zero 2-pixel border (padded MNIST)."""
    x = (torch.rand(num_images, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    return torch.nn.functional.pad(x, (2, 2, 2, 2))


def test_every_backbone_is_covered():
    assert set(SECTIONS) == set(ARCHES)


@pytest.mark.parametrize("arch", ARCHES)
def test_config_from_params_is_typed_strict_and_names_nvae_datasets(arch):
    config = backbone_config(arch, SECTIONS[arch], "cifar10")
    assert dataclasses.is_dataclass(config) and isinstance(config, backbone_class(arch).config_class)
    # the arch args a checkpoint stores rebuild the same config
    assert backbone_config(arch, dataclasses.asdict(config), "mnist5k") == config
    if arch == "nvae":  # NVAE names the data set itself: cifar10 -> colour, mixture of logistics
        assert (config.dataset, config.input_channels, config.likelihood) == ("cifar10", 3, "dmol")
        assert backbone_config(arch, SECTIONS[arch], "celeba64").input_size == 64
        with pytest.raises(ValueError, match="set vae.nvae.dataset"):
            backbone_config(arch, SECTIONS[arch], "my_faces")
    else:  # a single-group VAE is the same on any data set
        assert config == backbone_config(arch, SECTIONS[arch], "mnist5k")
    with pytest.raises(ValueError, match="latent_dims|unknown"):
        backbone_config(arch, {**SECTIONS[arch], "latent_dims": 3}, "mnist5k")


@pytest.mark.parametrize("arch", ARCHES)
def test_initialise_from_data_centres_only_the_mlp(arch):
    model = tiny(arch)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    images = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    images[:1, :, 2:30, 2:30] = 255  # mean pixel 0.25 inside the crop
    model.initialise_from_data(images)
    after = model.state_dict()
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    if arch == "mlp":  # the IWAE-paper init: input centred on the mean, output bias at logit(mean)
        assert changed == ["data_mean", "decoder.4.bias"]
        torch.testing.assert_close(after["data_mean"], torch.full((784,), 0.25))
        torch.testing.assert_close(after["decoder.4.bias"], torch.full((784,), math.log(1 / 3)))  # logit
    else:
        assert changed == []


@pytest.mark.parametrize("arch", ARCHES)
def test_kl_term_weights_and_balances_as_the_backbone_says(arch):
    model = tiny(arch)
    num_groups = model.num_groups
    kl = torch.arange(1.0, 1.0 + 3 * num_groups).reshape(3, num_groups)  # (B, K), groups unequal
    plain = kl.sum(dim=1)
    torch.testing.assert_close(model.kl_term(kl, 1.0, balance=True), plain)  # no balancing after warm-up
    torch.testing.assert_close(model.kl_term(kl, 0.5, balance=False), 0.5 * plain)
    balanced = model.kl_term(kl, 0.5, balance=True)
    if arch == "nvae":  # NVAE's kl_balancer while beta < 1: gamma_k from the batch and the 'square' alpha
        gamma = kl_balance_coefficients(kl, model.kl_alpha())
        torch.testing.assert_close(balanced, 0.5 * (kl * gamma).sum(dim=1))
        assert not torch.allclose(balanced, 0.5 * plain)  # the balancing does change the weights here
    else:  # one group: nothing to balance
        torch.testing.assert_close(balanced, 0.5 * plain)


@pytest.mark.parametrize("arch", ARCHES)
def test_regulariser_is_nvae_spectral_plus_batchnorm_and_zero_elsewhere(arch):
    model = tiny(arch)
    value = model.regulariser()
    assert value.dim() == 0
    if arch == "nvae":
        torch.manual_seed(3)  # the spectral norm's power iteration starts from random vectors
        fresh = tiny(arch)
        expected = fresh.spectral_loss() + fresh.batchnorm_loss()
        torch.manual_seed(3)
        fresh_again = tiny(arch)
        torch.testing.assert_close(fresh_again.regulariser(), expected)
        assert value.item() > 0 and value.requires_grad
    else:
        assert value.item() == 0.0


@pytest.mark.parametrize("arch, expected", [("nvae", 784), ("mlp", 784), ("conv", 1024)])
def test_scored_dims_are_the_values_log_px_sums_over(arch, expected):
    # With Bernoulli logits 0 every scored value has log p = -log 2, so log p(x|z) = -D log 2: the D of
    # bits/dim is what the likelihood scores (MNIST's central 28x28 for NVAE and the MLP; all of the
    # conv VAE's 32x32).
    model = tiny(arch).eval()
    x = binary_images(2)
    with torch.no_grad():
        logits = torch.zeros_like(model(x).logits)
        log_px = model.log_px(logits, x)
    assert model.scored_dims() == expected
    torch.testing.assert_close(log_px, torch.full((2,), -expected * math.log(2)))


@pytest.mark.parametrize("arch", ARCHES)
def test_prepare_for_temperature_readjusts_only_nvae_batchnorm(arch):
    model = tiny(arch).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    walks = []
    sample = model.sample
    model.sample = lambda num_images, temperature: (
        walks.append((num_images, temperature)) or sample(num_images, temperature)
    )
    torch.manual_seed(2)
    model.prepare_for_temperature(0.5, batch_size=8, num_passes=3)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not model.training  # ready to sample
    # run.grid_readjust_passes prior batches of the grid's batch size at its temperature (NVAE only)
    assert walks == ([(8, 0.5)] * 3 if arch == "nvae" else [])
    if arch == "nvae":  # only BatchNorm running statistics move (NVAE's --readjust_bn), never a weight
        assert changed and all(
            name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in changed
        )
    else:
        assert changed == set()


# NVAE with a flow cell per group, beside the tiny one: the flows run inside the
# posterior side, so a stopped pass that skipped or reordered them would change z_k or its draws.
FLOW_NVAE = {**TINY_NVAE_ARGS, "num_nf": 1}


def forward_and_group(model: torch.nn.Module, x: torch.Tensor, group: int):
    """forward's group ``group`` and posterior_group's, each right after the same seed."""
    with torch.no_grad():
        torch.manual_seed(7)
        full = model(x)
        torch.manual_seed(7)
        draw = model.posterior_group(x, group)
    return full, draw


@pytest.mark.parametrize("arch", [*ARCHES, "nvae+flows"])
def test_posterior_group_equals_forwards_group_under_the_same_seed(arch):
    # A stream-mode NCE job learns from posterior_group's (z_k, context, prior) in place of forward's. It
    # can differ only by a wrong stopping point (a group short: another group's z), a draw out of order
    # (z_<k from other noise, so another context) or a prior built from the wrong state: each changes the
    # values compared here, exactly (the same operations in the same order give the same bits).
    if arch == "nvae+flows":
        torch.manual_seed(0)
        model = build_vae("nvae", dataclasses.asdict(backbone_config("nvae", FLOW_NVAE, "mnist5k"))).eval()
    else:
        model = tiny(arch).eval()
    x = binary_images(3)
    for group in range(model.num_groups):
        full, draw = forward_and_group(model, x, group)
        assert torch.equal(draw.latent, full.latents[group])
        assert (draw.context is None) == (full.contexts[group] is None)
        if draw.context is not None:
            assert torch.equal(draw.context, full.contexts[group])
        for z in (full.latents[group], torch.randn_like(full.latents[group])):
            assert torch.equal(draw.prior.log_prob(z), full.priors[group].log_prob(z))
    with pytest.raises(ValueError, match=f"group {model.num_groups} out of range"):
        model.posterior_group(x, model.num_groups)


def test_nvae_posterior_group_runs_no_cell_below_its_group():
    # The point of posterior_group: job k of K runs the encoder and the walk down to group k, not the
    # decoder combiners, posterior combiners and post-process cells below it. Counted by hooks, so a pass
    # that stopped only after the whole walk (the values would still be equal) fails here.
    from ncp.models.nvae.cells import DecCombinerCell, EncCombinerCell

    model = tiny("nvae").eval()
    calls = {"decoder combiner": 0, "posterior combiner": 0, "post-process": 0}

    def count(kind):
        def hook(*_):
            calls[kind] += 1

        return hook

    for module in model.modules():
        if isinstance(module, DecCombinerCell):
            module.register_forward_hook(count("decoder combiner"))
        elif isinstance(module, EncCombinerCell):
            module.register_forward_hook(count("posterior combiner"))
    for cell in model.post_process:
        cell.register_forward_hook(count("post-process"))
    x = binary_images(2)
    num_groups = model.num_groups
    for group in range(num_groups):
        calls.update(dict.fromkeys(calls, 0))
        with torch.no_grad():
            model.posterior_group(x, group)
        # groups 0..k-1 each fed z into the decoder; groups 1..k each built q from a posterior combiner
        assert calls == {"decoder combiner": group, "posterior combiner": group, "post-process": 0}
    calls.update(dict.fromkeys(calls, 0))
    with torch.no_grad():
        model(x)
    assert calls == {
        "decoder combiner": num_groups,
        "posterior combiner": num_groups - 1,
        "post-process": len(model.post_process),
    }
