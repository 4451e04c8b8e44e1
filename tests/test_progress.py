"""Long stages report progress in their logs: images done, rate and time left."""

from __future__ import annotations

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

        def update(self, amount):
            self.n += amount
            positions.append(self.n)

        def close(self):
            positions.append("closed")

    monkeypatch.setattr(sample, "progress_bar", lambda total, desc, disable=False: RecordingBar())
    drawn = sample.draw_samples(model, sample_from_prior, num_samples=2, batch_size=2, desc="sample base")
    assert drawn["images"].shape[0] == 2
    assert positions[:4] == [0.5, 1.0, 1.5, 2.0]  # a quarter of the batch after each of the 4 groups
    assert positions[-2:] == [2.0, "closed"]  # whole images at the end of the batch
