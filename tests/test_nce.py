"""Known-answer tests for the NCE classifiers: their logits must approach the true log q/p."""

from __future__ import annotations

import math

import pytest
import torch
from toy_hierarchy import (
    MixtureLogRatio,
    SingleGroupToyVAE,
    TwoGroupToyVAE,
    isotropic_normal_log_prob,
    make_mixture,
)

from ncp.priors import (
    NCPPrior,
    build_classifier,
    evaluate_classifier,
    load_classifier,
    save_classifier,
    split_images,
    train_classifier,
)
from ncp.samplers import SIRSampler

torch.set_num_threads(1)


def ratio_agreement(estimate: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Pearson correlation and mean absolute error between estimated and true log r."""
    corr = torch.corrcoef(torch.stack([estimate, truth]))[0, 1].item()
    return corr, (estimate - truth).abs().mean().item()


@pytest.fixture(scope="module")
def mixture_classifiers():
    """Classifiers trained on q = 3-component mixture vs p = N(0, I), in 2-D and 20-D."""
    trained = {}
    for dim, num_pairs, hidden in ((2, 10_000, 64), (20, 20_000, 128)):
        torch.manual_seed(dim)
        q = make_mixture(dim)
        z_q, z_p = q.sample(num_pairs), torch.randn(num_pairs, dim)
        classifier, history = train_classifier(
            z_q, z_p, hidden=hidden, num_blocks=2, epochs=10, batch_size=256, lr=2e-3, seed=dim
        )
        # the returned weights are the best held-out ones: recompute their held-out loss
        _, val_index, _ = split_images(num_pairs, 0.1, 0.0, seed=dim)  # one pair per image here
        held_out = evaluate_classifier(classifier, z_q[val_index], z_p[val_index])
        assert held_out.loss == pytest.approx(history.best_val_loss, abs=1e-5)
        trained[dim] = (q, classifier, history)
    return trained


@pytest.mark.parametrize("dim", [2, 20])
def test_classifier_learns_true_log_ratio(mixture_classifiers, dim):
    q, classifier, _ = mixture_classifiers[dim]
    true_log_r = MixtureLogRatio(q)
    z = q.sample(5000)  # where q has mass
    with torch.no_grad():
        corr, mae = ratio_agreement(classifier(z), true_log_r(z))
    spread = true_log_r(z).std().item()
    assert corr > 0.95, corr
    # an untrained (log r = 0) or sign-flipped classifier has error ~ E_q|log r| >= 0.6
    assert mae < (0.2 if dim == 2 else 0.35) and mae < 0.3 * spread, (mae, spread)


@pytest.mark.parametrize("dim", [2, 20])
def test_diagnostics_match_closed_form_divergences(mixture_classifiers, dim):
    q, classifier, history = mixture_classifiers[dim]
    true_log_r = MixtureLogRatio(q)
    z_q, z_p = q.sample(20_000), torch.randn(20_000, dim)
    found = evaluate_classifier(classifier, z_q, z_p)
    lq, lp = true_log_r(z_q), true_log_r(z_p)
    # the Bayes-optimal loss L* uses the true ratio: D = sigmoid(log r)
    best_loss = (torch.nn.functional.softplus(-lq).mean() + torch.nn.functional.softplus(lp).mean()).item()
    assert best_loss - 0.01 < found.loss < best_loss + 0.04, (found.loss, best_loss)
    assert found.jsd == pytest.approx(math.log(2) - found.loss / 2)
    # KL(q || p) = 0.42 (2-D), 1.12 (20-D); -KL(p || q) = -0.48, -1.57: learned ones are ~0.07 off
    assert found.mean_log_r_q == pytest.approx(lq.mean().item(), abs=0.15)
    assert found.mean_log_r_p == pytest.approx(lp.mean().item(), abs=0.2)
    assert history.best_val_loss == min(history.val_loss)
    assert history.val_loss[history.best_epoch] == history.best_val_loss
    assert len(history.train_loss) == len(history.val_loss) == 10


def test_sir_with_trained_classifier_moves_mean_toward_q(mixture_classifiers):
    q, classifier, _ = mixture_classifiers[2]
    torch.manual_seed(3)
    vae = SingleGroupToyVAE(q)
    z = vae.walk_prior(3000, SIRSampler(NCPPrior([classifier]).freeze(), 200)).latents[0]
    gap_before = q.mean().norm().item()  # p's mean is 0
    gap_after = (z.mean(0) - q.mean()).norm().item()
    assert gap_before > 0.5 and gap_after < 0.15 * gap_before, (gap_before, gap_after)


def test_context_classifier_learns_conditional_ratio():
    """Group 2 of the toy hierarchy: r_2 depends on z_2 only through z_2 - f(z_1) (needs context)."""
    torch.manual_seed(0)
    vae = TwoGroupToyVAE()
    z1, z2 = vae.sample_q(10_000)
    z2_p = vae.prior_2(z1).sample()
    classifier, _ = train_classifier(z2, z2_p, z1, hidden=64, epochs=10, lr=2e-3, seed=1)
    z1, z2 = vae.sample_q(5000)
    with torch.no_grad():
        corr, mae = ratio_agreement(classifier(z2, z1), vae.true_ratios()[1](z2, z1))
    assert corr > 0.95 and mae < 0.25, (corr, mae)


def test_conv_classifier_learns_spatial_conditional_ratio():
    """z (1, 2, 2) with context map (2, 2, 2): q shifts p's per-pixel mean by 0.5 c_1, std 0.8."""

    def draw(n):
        c = torch.randn(n, 2, 2, 2)
        mean_p, mean_q = 0.5 * c[:, :1], 0.5 * c[:, :1] + 0.5 * c[:, 1:]  # (n, 1, 2, 2)
        z_q, z_p = mean_q + 0.8 * torch.randn_like(mean_q), mean_p + torch.randn_like(mean_p)
        true = isotropic_normal_log_prob(z_q.flatten(1), mean_q.flatten(1), 0.8)
        true = true - isotropic_normal_log_prob(z_q.flatten(1), mean_p.flatten(1), 1.0)
        return c, z_q, z_p, true

    torch.manual_seed(0)
    c, z_q, z_p, _ = draw(6000)
    classifier, _ = train_classifier(
        z_q, z_p, c, hidden=32, num_blocks=1, epochs=8, lr=3e-3, norm="batch", seed=0
    )
    c, z_q, _, true = draw(4000)
    with torch.no_grad():
        corr, mae = ratio_agreement(classifier(z_q, c), true)
    assert corr > 0.9 and mae < 0.3, (corr, mae)


@pytest.mark.parametrize(
    "group_shape, context_shape",
    [((3, 4, 4), (5, 4, 4)), ((3, 4, 4), (5,)), ((3, 4, 4), None), ((6,), (4,)), ((6,), None)],
)
def test_classifier_shapes_zero_start_and_context_broadcast(group_shape, context_shape):
    torch.manual_seed(0)
    classifier = build_classifier(group_shape, context_shape, hidden=16, num_blocks=2).eval()
    z = torch.randn(12, *group_shape)  # 3 proposals x 4 images, proposal-major
    c = None if context_shape is None else torch.randn(4, *context_shape)
    c_full = None if c is None else c.repeat(3, *[1] * (c.dim() - 1))  # (12, ...)
    assert torch.equal(classifier(z, c_full), torch.zeros(12))  # log r = 0 before training
    for p in classifier.parameters():  # random weights, to compare the two context paths
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        full = classifier(z, c_full)
        broadcast = classifier(z, c)
    assert full.shape == (12,)
    assert torch.allclose(full, broadcast, atol=1e-5)
    if c is not None:  # the context must matter
        assert not torch.allclose(full, classifier(z, torch.randn_like(c_full)), atol=1e-3)
    rebuilt = build_classifier(**classifier.build_args)
    rebuilt.load_state_dict(classifier.state_dict())
    assert torch.allclose(rebuilt.eval()(z, c_full), full, atol=1e-6)


def test_ncp_prior_checkpoint_round_trip_and_expanded_context(tmp_path):
    torch.manual_seed(0)
    classifiers = [
        build_classifier((4,), None, hidden=8),
        None,
        build_classifier((4,), (3,), hidden=8),
    ]
    for classifier in (classifiers[0], classifiers[2]):
        for p in classifier.parameters():
            torch.nn.init.normal_(p, std=0.3)
    prior = NCPPrior(classifiers).freeze()
    # group 1 keeps its base prior: load groups 0 and 2 through the one save/load pair
    for k in (0, 2):
        save_classifier(classifiers[k], tmp_path / f"group_{k}.pt", group=k, vae_fingerprint="vae-a")
    loaded = NCPPrior(
        [
            load_classifier(tmp_path / "group_0.pt", group=0),
            None,
            load_classifier(tmp_path / "group_2.pt", group=2),
        ]
    )
    latents, contexts = [torch.randn(5, 4)] * 3, [None, torch.randn(5, 2), torch.randn(5, 3)]
    expected = prior.log_r(0, latents[0]) + prior.log_r(2, latents[2], contexts[2])
    assert torch.allclose(loaded.sum_log_r(latents, contexts), expected, atol=1e-6)
    assert torch.equal(loaded.log_r(1, latents[1], contexts[1]), torch.zeros(5))  # no classifier
    # a classifier that cannot broadcast gets its context expanded proposal-major
    prior.classifiers["2"].broadcasts_context = False
    z = torch.randn(15, 4)  # 3 proposals x 5 images
    full = prior.log_r(2, z, contexts[2].repeat(3, 1))
    assert torch.allclose(prior.log_r(2, z, contexts[2]), full, atol=1e-6)


def test_train_accepts_float16_caches_and_rejects_bad_input():
    torch.manual_seed(0)
    z_q, z_p = (1.0 + torch.randn(400, 3)).half(), torch.randn(400, 3).half()
    classifier, history = train_classifier(z_q, z_p, hidden=16, epochs=2, batch_size=64)
    assert next(classifier.parameters()).dtype == torch.float32
    assert len(history.train_loss) == 2 and history.best_epoch in (0, 1)
    with pytest.raises(ValueError, match="one shape"):
        train_classifier(z_q, z_p[:, :2])
    with pytest.raises(ValueError, match="context has"):
        train_classifier(z_q, z_p, torch.randn(10, 2))
    with pytest.raises(ValueError, match="val_fraction"):
        train_classifier(z_q, z_p, val_fraction=1.0)
    with pytest.raises(ValueError, match="group shape"):
        build_classifier((2, 3))
    with pytest.raises(ValueError, match="spatial size"):
        build_classifier((2, 4, 4), (3, 8, 8))
