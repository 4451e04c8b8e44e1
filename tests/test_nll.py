"""IW NLL on a linear-Gaussian VAE, whose marginal likelihood is known in closed form.

z ~ N(0, I), x | z ~ N(W z + b, s^2 I)  =>  p(x) = N(x; b, W W^T + s^2 I), and the exact posterior
is N(Sigma W^T (x - b) / s^2, Sigma) with Sigma = (I + W^T W / s^2)^-1. An NCP-style tilt
r(z) = exp(a^T z) turns the prior into N(a, I) with Z = exp(|a|^2 / 2), so that case is exact too.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from ncp.metrics.nll import importance_weighted_nll
from ncp.models.base import PriorWalk, VAEOutput

torch.set_num_threads(1)
DATA_DIM, LATENT_DIM, NOISE_STD = 4, 2, 0.5


class LinearGaussianVAE(nn.Module):
    """A LatentVAE with one group: q(z|x) = N(A (x - b) + c, L L^T), decoder mean W z + b."""

    num_groups = 1

    def __init__(self, weight, bias, enc_matrix, enc_offset, enc_scale_tril):
        super().__init__()
        self.register_buffer("weight", weight)  # (D, d)
        self.register_buffer("bias", bias)  # (D,)
        self.register_buffer("enc_matrix", enc_matrix)  # (d, D)
        self.register_buffer("enc_offset", enc_offset)  # (d,)
        self.register_buffer("enc_scale_tril", enc_scale_tril)  # (d, d)

    def group_shapes(self):
        return [(LATENT_DIM,)]

    def context_shapes(self):
        return [None]

    def _prior(self, batch: int):
        zeros = torch.zeros(batch, LATENT_DIM, dtype=self.weight.dtype)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def forward(self, x, noise_scale: float = 1.0) -> VAEOutput:
        mean = (x - self.bias) @ self.enc_matrix.T + self.enc_offset  # (B, d)
        q = MultivariateNormal(mean, scale_tril=self.enc_scale_tril)
        eps = torch.randn_like(mean)
        z = mean + noise_scale * eps @ self.enc_scale_tril.T  # (B, d)
        prior = self._prior(len(x))
        log_q, log_p = q.log_prob(z), prior.log_prob(z)
        logits = z @ self.weight.T + self.bias  # (B, D)
        return VAEOutput(logits, log_q, log_p, (log_q - log_p)[:, None], [z], [None], [prior])

    def log_px(self, logits, x):
        return Normal(logits, NOISE_STD).log_prob(x).sum(-1)

    def walk_prior(self, num_images: int, choose, temperature: float = 1.0) -> PriorWalk:
        z = choose(0, self._prior(num_images), None)
        return PriorWalk(z @ self.weight.T + self.bias, [z], [None])

    def sample(self, num_images: int, temperature: float = 1.0):
        return self.walk_prior(num_images, lambda k, prior, context: prior.sample(), temperature).logits

    def mean_image(self, logits):
        return logits


def make_model(prior_mean: torch.Tensor | None = None, q_widen: float = 1.0, q_shift: float = 0.0):
    """The model with its exact posterior as q (for prior N(prior_mean, I)), optionally widened / shifted."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(DATA_DIM, LATENT_DIM, generator=generator, dtype=torch.float64)
    bias = torch.randn(DATA_DIM, generator=generator, dtype=torch.float64)
    covariance = torch.linalg.inv(
        torch.eye(LATENT_DIM, dtype=torch.float64) + weight.T @ weight / NOISE_STD**2
    )
    enc_matrix = covariance @ weight.T / NOISE_STD**2
    prior_mean = torch.zeros(LATENT_DIM, dtype=torch.float64) if prior_mean is None else prior_mean
    enc_offset = covariance @ prior_mean + q_shift
    scale_tril = torch.linalg.cholesky(covariance) * q_widen
    return LinearGaussianVAE(weight, bias, enc_matrix, enc_offset, scale_tril)


def exact_log_px(model: LinearGaussianVAE, x, prior_mean=None):
    """log N(x; W a + b, W W^T + s^2 I) (a = prior mean, 0 for the base prior), per image."""
    mean = model.bias if prior_mean is None else model.weight @ prior_mean + model.bias
    covariance = model.weight @ model.weight.T + NOISE_STD**2 * torch.eye(DATA_DIM, dtype=torch.float64)
    return MultivariateNormal(mean, covariance).log_prob(x)


def data(model, count=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, LATENT_DIM, generator=generator, dtype=torch.float64)
    noise = NOISE_STD * torch.randn(count, DATA_DIM, generator=generator, dtype=torch.float64)
    return z @ model.weight.T + model.bias + noise


def test_exact_posterior_is_exact_with_one_sample():
    model = make_model()
    x = data(model)
    torch.manual_seed(0)
    result = importance_weighted_nll(model, x, num_iw_samples=1, batch_size=5)
    expected = -exact_log_px(model, x)
    assert result.nats == pytest.approx(float(expected.mean()), abs=1e-9)
    assert result.bits_per_dim == pytest.approx(result.nats / (math.log(2) * DATA_DIM))
    assert result.std_error == pytest.approx(float(expected.std() / math.sqrt(len(x))), rel=1e-6)
    assert (result.num_images, result.iw_samples, result.num_dims) == (12, 1, DATA_DIM)
    torch.manual_seed(0)
    scored = importance_weighted_nll(model, x, num_iw_samples=1, batch_size=5, num_dims=3)
    assert scored.bits_per_dim == pytest.approx(result.nats / (math.log(2) * 3))


def test_samples_stay_with_their_image():
    # K = 3 samples, 4 images per pass: any mix-up of (image, sample) rows changes the logsumexp.
    model = make_model()
    x = data(model)
    torch.manual_seed(0)
    result = importance_weighted_nll(model, x, num_iw_samples=3, batch_size=12)
    assert result.nats == pytest.approx(float(-exact_log_px(model, x).mean()), abs=1e-9)


@pytest.mark.parametrize("batch_size", [4096, 300])  # 300: each image's 2,000 samples in 7 chunks
def test_many_samples_approach_exact_with_an_approximate_posterior(batch_size):
    model = make_model(q_widen=1.4, q_shift=0.2)
    x = data(model)
    exact = float(-exact_log_px(model, x).mean())
    torch.manual_seed(0)
    single = importance_weighted_nll(model, x, num_iw_samples=1, batch_size=batch_size)
    many = importance_weighted_nll(model, x, num_iw_samples=2000, batch_size=batch_size)
    assert single.nats > exact + 0.1  # the ELBO is loose for this q
    assert many.nats == pytest.approx(exact, abs=0.01)
    assert many.nats >= exact - 0.005  # a bound up to Monte-Carlo noise


def test_constant_log_ratio_cancels_with_its_normaliser():
    model = make_model(q_widen=1.4, q_shift=0.2)
    x = data(model)
    torch.manual_seed(5)
    base = importance_weighted_nll(model, x, num_iw_samples=16, batch_size=64)
    torch.manual_seed(5)

    def constant(latents, contexts):
        return torch.full((len(latents[0]),), 3.7, dtype=torch.float64)

    tilted = importance_weighted_nll(model, x, num_iw_samples=16, batch_size=64, log_r_fn=constant, log_z=3.7)
    assert tilted.nats == pytest.approx(base.nats, abs=1e-9) and tilted.log_z == 3.7


def test_exponential_tilt_gives_the_shifted_prior_marginal():
    # r(z) = exp(a^T z), Z = exp(|a|^2 / 2): p(z) r(z) / Z = N(a, I). With q the exact posterior of
    # that tilted model, one sample per image gives the exact tilted marginal.
    prior_mean = torch.tensor([0.8, -0.5], dtype=torch.float64)
    model = make_model(prior_mean=prior_mean)
    x = data(model)

    def log_r(latents, contexts):
        return latents[0] @ prior_mean

    result = importance_weighted_nll(
        model, x, num_iw_samples=1, batch_size=8, log_r_fn=log_r, log_z=float(prior_mean @ prior_mean) / 2
    )
    assert result.nats == pytest.approx(float(-exact_log_px(model, x, prior_mean).mean()), abs=1e-9)
    assert result.nats != pytest.approx(float(-exact_log_px(model, x).mean()), abs=0.01)


def test_input_handling():
    model = make_model()
    with pytest.raises(ValueError, match="uint8"):
        importance_weighted_nll(model, data(model), 1, 4, binarize_generator=torch.Generator())
    with pytest.raises(ValueError, match="positive"):
        importance_weighted_nll(model, data(model), 0, 4)
