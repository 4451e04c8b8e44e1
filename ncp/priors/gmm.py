"""A Gaussian-mixture base prior fitted to posterior means after VAE training.

This is the second stage of RAE (Ghosh et al., ICLR 2020, "From Variational to Deterministic
Autoencoders"): fit a K-component Gaussian mixture to the encoder's posterior means, then sample
latents from it instead of N(0, I). RAE's code fits scikit-learn's ``GaussianMixture`` with full
covariances, ``max_iter=2000`` and ``tol=1e-3`` (my_utility/estimate_density_and_sample.py); the
NCP paper uses K = 10 for its Table 1. The fitted mixture is held as torch buffers so that
``log_prob`` is differentiable in z (Langevin dynamics needs its gradient) and the prior moves with
``.to(device)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

CovarianceType = Literal["full", "diag"]


class GMMPrior(nn.Module):
    """A K-component Gaussian mixture over a flat latent z of ``latent_dim`` dimensions.

    Calling the module with ``(num_images, temperature)`` returns a ``MixtureSameFamily`` with batch
    shape ``(num_images,)`` and event shape ``(latent_dim,)``; the temperature scales every
    component's standard deviations (its Cholesky factor), leaving the means and weights alone.
    """

    def __init__(self, log_weights: Tensor, means: Tensor, scales: Tensor):
        """``log_weights`` (K,), ``means`` (K, D); ``scales`` is (K, D, D) lower-triangular Cholesky
        factors of full covariances, or (K, D) standard deviations of diagonal ones."""
        super().__init__()
        if log_weights.dim() != 1 or means.dim() != 2 or means.shape[0] != log_weights.shape[0]:
            raise ValueError(
                f"GMMPrior needs log_weights (K,) and means (K, D); got {tuple(log_weights.shape)} "
                f"and {tuple(means.shape)}"
            )
        num_components, latent_dim = means.shape
        if scales.shape not in (
            torch.Size([num_components, latent_dim, latent_dim]),
            torch.Size([num_components, latent_dim]),
        ):
            raise ValueError(
                f"GMMPrior scales must be (K, D, D) or (K, D) = ({num_components}, {latent_dim}[, "
                f"{latent_dim}]); got {tuple(scales.shape)}"
            )
        self.register_buffer("log_weights", log_weights.float())
        self.register_buffer("means", means.float())
        self.register_buffer("scales", scales.float())

    @property
    def num_components(self) -> int:
        """K, the number of mixture components."""
        return self.means.shape[0]

    @property
    def latent_dim(self) -> int:
        """D, the dimension of the latent vector."""
        return self.means.shape[1]

    @property
    def covariance_type(self) -> CovarianceType:
        """'full' if ``scales`` holds Cholesky factors, 'diag' if it holds standard deviations."""
        return "full" if self.scales.dim() == 3 else "diag"

    @classmethod
    def placeholder(
        cls, num_components: int, latent_dim: int, covariance_type: CovarianceType = "full"
    ) -> GMMPrior:
        """A mixture of K standard normals with the right buffer shapes, for ``load_state_dict``."""
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag'; got {covariance_type!r}")
        log_weights = torch.full((num_components,), -float(np.log(num_components)))
        means = torch.zeros(num_components, latent_dim)
        if covariance_type == "full":
            scales = torch.eye(latent_dim).expand(num_components, latent_dim, latent_dim).clone()
        else:
            scales = torch.ones(num_components, latent_dim)
        return cls(log_weights, means, scales)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> GMMPrior:
        """Rebuild a prior saved with ``state_dict()``; K, D and the covariance type come from
        the buffer shapes."""
        missing = {"log_weights", "means", "scales"} - set(state)
        if missing:
            raise ValueError(f"GMMPrior state_dict lacks {sorted(missing)}")
        return cls(state["log_weights"], state["means"], state["scales"])

    def forward(self, num_images: int, temperature: float = 1.0) -> MixtureSameFamily:
        """The mixture p(z) with batch shape (num_images,), component stds times ``temperature``."""
        if num_images < 1:
            raise ValueError(f"num_images must be positive; got {num_images}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        k, d = self.num_components, self.latent_dim
        mixing = Categorical(logits=self.log_weights.expand(num_images, k))  # batch (B,), K classes
        means = self.means.expand(num_images, k, d)  # (B, K, D)
        if self.covariance_type == "full":
            scale_tril = (self.scales * temperature).expand(num_images, k, d, d)  # (B, K, D, D)
            components = MultivariateNormal(means, scale_tril=scale_tril)
        else:
            stds = (self.scales * temperature).expand(num_images, k, d)  # (B, K, D)
            components = Independent(Normal(means, stds), 1)
        return MixtureSameFamily(mixing, components)


def fit_gmm_prior(
    posterior_means: Tensor | np.ndarray,
    num_components: int = 10,
    seed: int = 0,
    covariance_type: CovarianceType = "full",
    max_iter: int = 2000,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> GMMPrior:
    """Fit a Gaussian mixture to posterior means (N, D) with scikit-learn's EM, as RAE does."""
    # Imported here so that loading a saved prior does not need scikit-learn.
    from sklearn.mixture import GaussianMixture

    if isinstance(posterior_means, Tensor):
        posterior_means = posterior_means.detach().cpu().numpy()
    points = np.asarray(posterior_means, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"posterior_means must be (N, D); got shape {points.shape}")
    if points.shape[0] < num_components:
        raise ValueError(
            f"need at least num_components={num_components} points to fit a GMM; got {points.shape[0]}"
        )
    if not np.isfinite(points).all():
        raise ValueError("posterior_means contain NaN or infinite values")
    if covariance_type not in ("full", "diag"):
        raise ValueError(f"covariance_type must be 'full' or 'diag'; got {covariance_type!r}")

    mixture = GaussianMixture(
        n_components=num_components,
        covariance_type=covariance_type,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        random_state=seed,
    )
    mixture.fit(points)
    if covariance_type == "full":
        scales = np.linalg.cholesky(mixture.covariances_)  # (K, D, D), lower-triangular
    else:
        scales = np.sqrt(mixture.covariances_)  # (K, D) standard deviations
    return GMMPrior(
        log_weights=torch.from_numpy(np.log(mixture.weights_)),
        means=torch.from_numpy(mixture.means_),
        scales=torch.from_numpy(scales),
    )
