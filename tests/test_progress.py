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
