"""Tests for the single-group MLP and conv VAEs and the GMM base prior (known answers only)."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch.distributions import MixtureSameFamily, MultivariateNormal

from ncp.models.conv_vae import ConvVAE, ConvVAEConfig
from ncp.models.mlp_vae import MLPVAE, MLPVAEConfig, negative_elbo
from ncp.models.single_group import StandardNormalPrior
from ncp.priors.gmm import GMMPrior, fit_gmm_prior

torch.set_num_threads(1)

TINY_CONV = ConvVAEConfig(
    image_size=32,
    in_channels=1,
    latent_dim=8,
    channels=(8, 16, 32, 64),
    kernel_size=3,
    likelihood="bernoulli",
)


def binary_images(num_images: int, seed: int = 0) -> torch.Tensor:
    """Random binary 1x32x32 images with a zero 2-pixel border, like padded MNIST."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(num_images, 1, 28, 28, generator=generator) < 0.3).float()
    return torch.nn.functional.pad(x, (2, 2, 2, 2))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension, by hand."""
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


# ------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("build", ["mlp", "conv"])
def test_forward_follows_the_single_group_contract(build):
    torch.manual_seed(0)
    model = MLPVAE() if build == "mlp" else ConvVAE(TINY_CONV)
    latent_dim = model.latent_dim
    x = binary_images(5)
    output = model(x)

    assert model.num_groups == 1
    assert model.group_shapes() == [(latent_dim,)]
    assert model.context_shapes() == [None]
    assert output.log_q.shape == output.log_p.shape == (5,)
    assert output.kl.shape == (5, 1)
    assert len(output.latents) == 1 and output.latents[0].shape == (5, latent_dim)
    assert output.contexts == [None]
    prior = output.priors[0]
    assert prior.batch_shape == (5,) and prior.event_shape == (latent_dim,)
    # The base prior is N(0, I): log p(z) matches the closed form.
    torch.testing.assert_close(output.log_p, standard_normal_log_prob(output.latents[0]))
    # log q(z|x) is the diagonal Gaussian the encoder returns, evaluated at the drawn z.
    torch.testing.assert_close(output.log_q, model.encode(x).log_prob(output.latents[0]))

    images = model.mean_image(output.logits)
    assert images.shape == (5, 1, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    assert model.log_px(output.logits, x).shape == (5,)
    assert model.mean_image(model.sample(3)).shape == (3, 1, 32, 32)


def test_noise_scale_zero_gives_the_posterior_mean():
    torch.manual_seed(0)
    model = MLPVAE()
    x = binary_images(4)
    output = model(x, noise_scale=0.0)
    torch.testing.assert_close(output.latents[0], model.encode(x).mean)
    with pytest.raises(ValueError, match="noise_scale"):
        model(x, noise_scale=-1.0)


def test_bad_inputs_raise_value_errors():
    model = MLPVAE()
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown MLPVAEConfig keys"):
        MLPVAE.from_config({"latent_dim": 5, "hiden": 3})
    with pytest.raises(ValueError, match="crop_size"):
        MLPVAEConfig(image_size=32, crop_size=27)
    with pytest.raises(ValueError, match="divisible"):
        ConvVAEConfig(image_size=40, channels=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="likelihood"):
        ConvVAEConfig(likelihood="laplace")
    with pytest.raises(ValueError, match="data_mean"):
        MLPVAE(data_mean=torch.rand(30, 30))


# ---------------------------------------------------------------------------- likelihoods and KL


def test_mlp_log_px_is_bernoulli_on_the_central_crop():
    torch.manual_seed(1)
    model = MLPVAE()
    x = binary_images(3, seed=1)
    logits = torch.randn(3, 784)
    probs = torch.sigmoid(logits.double())
    pixels = x[:, 0, 2:30, 2:30].reshape(3, 784).double()
    expected = (pixels * probs.log() + (1 - pixels) * (1 - probs).log()).sum(dim=1)
    torch.testing.assert_close(model.log_px(logits, x).double(), expected, rtol=1e-5, atol=1e-3)
    # The 2-pixel border is outside the model: changing it changes nothing.
    x_border = x.clone()
    x_border[:, :, :2, :] = 1.0
    torch.testing.assert_close(model.log_px(logits, x_border), model.log_px(logits, x))


def test_mlp_mean_image_pads_the_bernoulli_means_back_to_32():
    model = MLPVAE()
    logits = torch.randn(2, 784)
    images = model.mean_image(logits)
    torch.testing.assert_close(images[:, 0, 2:30, 2:30], torch.sigmoid(logits).reshape(2, 28, 28))
    assert images[:, :, :2].abs().sum() == 0 and images[:, :, :, 30:].abs().sum() == 0


def test_conv_gaussian_log_px_matches_the_closed_form():
    config = dataclasses.replace(TINY_CONV, likelihood="normal", normal_std=0.4)
    model = ConvVAE(config)
    x = torch.rand(2, 1, 32, 32)
    logits = torch.randn(2, 1, 32, 32)
    mean = torch.sigmoid(logits)
    expected = (-0.5 * ((x - mean) / 0.4) ** 2 - math.log(0.4) - 0.5 * math.log(2 * math.pi)).sum(
        dim=(1, 2, 3)
    )
    torch.testing.assert_close(model.log_px(logits, x), expected, rtol=1e-5, atol=1e-3)
    # RAE's CelebA VAE: Keras mse over 3 channels + 0.09024 KL = Gaussian std sqrt(3 * 0.09024 / 2).
    assert ConvVAEConfig().normal_std == pytest.approx(math.sqrt(3 * 0.09024 / 2))


def test_learned_normal_std_is_a_trainable_parameter():
    model = ConvVAE(dataclasses.replace(TINY_CONV, likelihood="normal", learn_normal_std=True))
    assert any(p is model.log_normal_std for p in model.parameters())
    fixed = ConvVAE(dataclasses.replace(TINY_CONV, likelihood="normal"))
    assert fixed.log_normal_std.requires_grad is False


def test_analytic_kl_matches_closed_form_and_monte_carlo():
    torch.manual_seed(2)
    model = MLPVAE(MLPVAEConfig(latent_dim=10))
    x = binary_images(3, seed=2)
    with torch.no_grad():
        kl = model(x).kl[:, 0]
        posterior = model.encode(x)
        loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
        closed_form = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(dim=1)
        z = posterior.sample((20000,))  # (S, B, D)
        log_ratio = posterior.log_prob(z) - standard_normal_log_prob(z)  # (S, B)
    torch.testing.assert_close(kl, closed_form, rtol=1e-5, atol=1e-5)
    standard_error = log_ratio.std(dim=0) / math.sqrt(z.shape[0])
    assert ((log_ratio.mean(dim=0) - kl).abs() < 4 * standard_error).all()


# ------------------------------------------------------------------------------------- prior walk


@pytest.mark.parametrize("build", ["mlp", "conv"])
def test_walk_prior_decodes_exactly_the_chosen_latent(build):
    torch.manual_seed(3)
    model = (MLPVAE() if build == "mlp" else ConvVAE(TINY_CONV)).eval()
    fixed_z = torch.randn(4, model.latent_dim)
    calls = []

    def choose(k, prior, context):
        calls.append((k, tuple(prior.batch_shape), context, prior.stddev[0, 0].item()))
        return fixed_z

    walk = model.walk_prior(4, choose, temperature=0.7)
    assert calls == [(0, (4,), None, pytest.approx(0.7))]
    assert walk.latents[0] is fixed_z and walk.contexts == [None]
    torch.testing.assert_close(walk.logits, model.decode(fixed_z))
    with pytest.raises(ValueError, match="latents of shape"):
        model.walk_prior(4, lambda k, prior, context: fixed_z[:2])


# ------------------------------------------------------------------------------------ GMM prior


def two_component_samples(num_points: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Samples from a known 2-D, 2-component Gaussian mixture, and its parameters."""
    rng = np.random.default_rng(seed)
    truth = {
        "weights": np.array([0.3, 0.7]),
        "means": np.array([[-3.0, 0.0], [3.0, 1.0]]),
        "covariances": np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]]),
    }
    labels = rng.choice(2, size=num_points, p=truth["weights"])
    points = np.stack([rng.multivariate_normal(truth["means"][k], truth["covariances"][k]) for k in labels])
    return points, truth


def true_mixture_log_density(points: np.ndarray, truth: dict) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, Sigma_k) in closed form."""
    densities = []
    for w, mu, cov in zip(truth["weights"], truth["means"], truth["covariances"]):
        diff = points - mu
        mahalanobis = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        log_norm = -0.5 * (2 * math.log(2 * math.pi) + math.log(np.linalg.det(cov)))
        densities.append(math.log(w) + log_norm - 0.5 * mahalanobis)
    return np.logaddexp(*densities)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_prior_recovers_a_known_mixture_and_matches_sklearn(covariance_type):
    points, truth = two_component_samples(4000)
    prior = fit_gmm_prior(points, num_components=2, seed=0, covariance_type=covariance_type)
    order = torch.argsort(prior.means[:, 0])  # left component first, as in ``truth``
    torch.testing.assert_close(
        prior.means[order].double(), torch.from_numpy(truth["means"]), atol=0.15, rtol=0
    )
    torch.testing.assert_close(
        prior.log_weights[order].exp().double(),
        torch.from_numpy(truth["weights"]),
        atol=0.03,
        rtol=0,
    )

    queries = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 0.5], [-2.0, 2.0], [4.0, -1.0]])
    distribution = prior(len(queries))
    assert isinstance(distribution, MixtureSameFamily)
    assert distribution.batch_shape == (5,) and distribution.event_shape == (2,)
    log_prob = distribution.log_prob(torch.from_numpy(queries).float()).double().numpy()
    reference = GaussianMixture(
        2, covariance_type=covariance_type, max_iter=2000, tol=1e-3, random_state=0
    ).fit(points)
    np.testing.assert_allclose(log_prob, reference.score_samples(queries), atol=1e-4)
    if covariance_type == "full":
        # The fitted density is close to the true one where the data lies.
        true_log_density = true_mixture_log_density(queries[:2], truth)
        np.testing.assert_allclose(log_prob[:2], true_log_density, atol=0.1)
    assert distribution.sample().shape == (5, 2)


def test_gmm_log_prob_gradient_and_temperature_match_a_gaussian():
    mean = torch.tensor([1.0, -2.0])
    covariance = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    prior = GMMPrior(torch.zeros(1), mean[None], torch.linalg.cholesky(covariance)[None])
    z = torch.tensor([[0.5, 0.5], [2.0, -1.0]], requires_grad=True)
    prior(2).log_prob(z).sum().backward()
    expected_grad = -(z.detach() - mean) @ torch.linalg.inv(covariance)  # -Sigma^-1 (z - mu)
    torch.testing.assert_close(z.grad, expected_grad, rtol=1e-5, atol=1e-5)

    cooled = MultivariateNormal(mean, covariance_matrix=0.49 * covariance)
    z = z.detach()
    torch.testing.assert_close(prior(2, temperature=0.7).log_prob(z), cooled.log_prob(z))


def test_gmm_prior_state_dict_round_trip():
    points, _ = two_component_samples(500, seed=1)
    prior = fit_gmm_prior(points, num_components=3, seed=0)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    restored = GMMPrior.from_state_dict(torch.load(buffer, weights_only=True))
    assert restored.covariance_type == "full" and restored.num_components == 3
    z = torch.randn(6, 2)
    torch.testing.assert_close(restored(6).log_prob(z), prior(6).log_prob(z))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_gmm_prior(np.zeros(10), num_components=2)
    with pytest.raises(ValueError, match="at least"):
        fit_gmm_prior(np.zeros((3, 2)), num_components=5)


def test_vae_with_a_fitted_gmm_prior_rebuilds_from_its_checkpoint():
    torch.manual_seed(4)
    model = ConvVAE(TINY_CONV).eval()
    x = binary_images(64, seed=4)
    with torch.no_grad():
        posterior_means = model(x, noise_scale=0.0).latents[0]
    gmm = fit_gmm_prior(posterior_means, num_components=3, seed=0, covariance_type="diag")
    model.set_base_prior(gmm)
    assert model.config.base_prior == "gmm" and model.config.gmm_components == 3

    output = model(x[:5])
    # No closed-form KL against a mixture: the single-sample estimate log q - log p.
    torch.testing.assert_close(output.kl[:, 0], output.log_q - output.log_p)
    assert isinstance(output.priors[0], MixtureSameFamily)

    rebuilt = ConvVAE.from_config(dataclasses.asdict(model.config))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    z = torch.randn(5, model.latent_dim)
    torch.testing.assert_close(rebuilt.base_prior(5).log_prob(z), model.base_prior(5).log_prob(z))
    torch.testing.assert_close(rebuilt.decode(z), model.decode(z))

    # The registry's route: original constructor config + base_prior_spec, then strict loading.
    spec = model.base_prior_spec()
    assert spec == {"kind": "gmm", "num_components": 3, "covariance_type": "diag"}
    from_spec = ConvVAE(TINY_CONV)
    from_spec.install_base_prior(spec)
    from_spec.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(from_spec.base_prior(5).log_prob(z), model.base_prior(5).log_prob(z))
    with pytest.raises(ValueError, match="base prior kind"):
        from_spec.install_base_prior({"kind": "flow"})

    model.set_base_prior(StandardNormalPrior(model.latent_dim))
    assert model.config.base_prior == "gaussian" and model.base_prior_spec() == {"kind": "gaussian"}
    with pytest.raises(ValueError, match="latent_dim"):
        model.set_base_prior(GMMPrior.placeholder(2, model.latent_dim + 1))


def test_mlp_checkpoint_keeps_the_data_mean():
    data_mean = torch.rand(1, 32, 32)
    model = MLPVAE(MLPVAEConfig(latent_dim=6), data_mean=data_mean)
    expected_bias = torch.logit(data_mean[0, 2:30, 2:30].clamp(1e-4, 1 - 1e-4)).flatten()
    torch.testing.assert_close(model.decoder[-1].bias, expected_bias)
    rebuilt = MLPVAE.from_config({**dataclasses.asdict(model.config), "data_mean": None})
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    # A data mean given through the config dict reaches the model like the constructor argument.
    from_dict = MLPVAE.from_config({"latent_dim": 6, "data_mean": data_mean.tolist()})
    torch.testing.assert_close(from_dict.decoder[-1].bias, expected_bias)
    with pytest.raises(ValueError, match="no data mean"):
        ConvVAE.from_config({"data_mean": [0.5]})
    x = binary_images(3)
    torch.testing.assert_close(rebuilt(x, noise_scale=0.0).logits, model(x, noise_scale=0.0).logits)


# ------------------------------------------------------------------------------------- training


def test_short_training_lowers_the_negative_elbo():
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(5)
    # 4 prototype digits-like patterns with 3% of pixels flipped: an easy, structured data set.
    prototypes = (torch.rand(4, 1, 28, 28, generator=generator) < 0.3).float()
    labels = torch.randint(0, 4, (256,), generator=generator)
    flips = (torch.rand(256, 1, 28, 28, generator=generator) < 0.03).float()
    x = torch.nn.functional.pad((prototypes[labels] + flips) % 2, (2, 2, 2, 2))  # (256, 1, 32, 32)

    model = MLPVAE(MLPVAEConfig(latent_dim=8, hidden=64), data_mean=x.mean(dim=0))

    def mean_negative_elbo() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            return negative_elbo(model, x).mean().item()

    before = mean_negative_elbo()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        batch = x[torch.randint(0, 256, (64,), generator=generator)]
        loss = negative_elbo(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_negative_elbo()
    # Prototypes + 3% noise: a good model needs about 784 * H(0.03) = 106 nats, far below the start.
    assert after < 0.6 * before, (before, after)
