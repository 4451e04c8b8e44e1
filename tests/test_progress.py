"""Long stages report progress in their logs: images done, rate and time left."""

from __future__ import annotations

import pytest

from ncp.progress import progress_bar


def test_progress_bar_in_a_log_shows_images_done_rate_and_time_left(capsys):
    bar = progress_bar(40, "sample sir")
    for _ in range(4):
        bar.update(10)
    bar.close()
    log = capsys.readouterr().err  # pytest's captured stderr is not a terminal, as a Snakemake log
    # fails if the bar went to stdout, lost its count, or printed no rate / remaining-time field
    assert "sample sir" in log and "40/40" in log
    assert "img/s" in log and "<" in log  # tqdm's "[elapsed<remaining, rate]"


def test_disabled_progress_bar_writes_nothing(capsys):
    bar = progress_bar(5, "quiet", disable=True)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""


def test_sampling_progress_moves_a_group_at_a_time_within_one_batch(monkeypatch):
    # One batch of 2 images through the tiny NVAE's 4 groups. Fails if the bar moves only once the whole
    # batch is done (at the paper's M = 5,000 over 30 groups that is minutes on a GPU, hours on a CPU of a
    # silent log), or if the group fractions do not add up to the images drawn.
    import torch
    from tiny_nvae import TINY_NVAE_ARGS

    from ncp import sample
    from ncp.models.base import sample_from_prior
    from ncp.models.nvae import NVAE

    torch.manual_seed(0)
    model = NVAE.from_args({"dataset": "mnist", **TINY_NVAE_ARGS}).eval()
    positions = []

    class RecordingBar:
        n = 0.0

        def update(self, amount):  # draw_samples sets n, then calls update(0) to redraw
            self.n += amount
            positions.append(self.n)

        def close(self):
            positions.append("closed")

    monkeypatch.setattr(sample, "progress_bar", lambda total, desc, disable=False: RecordingBar())
    drawn = sample.draw_samples(model, sample_from_prior, num_samples=2, batch_size=2, desc="sample base")
    assert drawn["images"].shape[0] == 2
    assert positions[:4] == [0.5, 1.0, 1.5, 2.0]  # a quarter of the batch after each of the 4 groups
    assert positions[-2:] == [2.0, "closed"]  # whole images at the end of the batch


@pytest.mark.parametrize("num_samples, batch_size", [(3, 3), (8, 8), (7, 3)])
def test_sampling_progress_never_passes_its_total_at_36_groups(capsys, monkeypatch, num_samples, batch_size):
    # The official CelebA-HQ-256 NVAE has 36 groups: 3 images / 36 added 36 times is 3 + 9e-16, and a
    # bar past its total made tqdm warn "clamping frac to range [0, 1]" in the sampling logs. Fails if
    # the bar's position is summed from the group fractions again, or if it stops short of its total.
    import warnings
    from types import SimpleNamespace

    import torch

    from ncp import sample

    num_groups = 36

    class FakeModel:  # the walk's contract only: one call of the chooser per group, then an image
        def walk_prior(self, batch, choose, temperature):
            latents = [choose(k, None, torch.zeros(batch, 1)) for k in range(num_groups)]
            return SimpleNamespace(latents=latents, logits=torch.zeros(batch, 1, 2, 2))

        def mean_image(self, logits):
            return logits

    def bar_redrawn_at_every_move(total, desc, disable=False):  # a long job's log redraws mid-batch
        bar = progress_bar(total, desc, disable=disable)
        bar.mininterval, bar.miniters, bar.dynamic_miniters = 0, 0, False
        return bar

    monkeypatch.setattr(sample, "progress_bar", bar_redrawn_at_every_move)
    model = FakeModel()
    model.num_groups = num_groups
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm's TqdmWarning is a Warning: any one now fails the test
        drawn = sample.draw_samples(
            model, lambda k, prior, context: context, num_samples, batch_size, desc="sample sir"
        )
    assert drawn["images"].shape[0] == num_samples and len(drawn["latents"]) == num_groups
    assert f"{num_samples}/{num_samples}" in capsys.readouterr().err
