"""Stage 2's data path and training state: shard cache, held-out images, resume, NaN rollback, file tags."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kill_points import wait_for_saved_step

from ncp.cache_latents import write_group_caches
from ncp.priors import (
    NCEDivergedError,
    ShardedPairs,
    TensorPairs,
    build_classifier,
    evaluate_classifier,
    load_classifier,
    save_classifier,
    split_images,
    train_on_pairs,
)
from ncp.priors.checkpoints import load_ncp_prior, vae_fingerprint
from ncp.priors.latent_cache import GroupCacheWriter

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def write_cache(
    folder: Path, z_q, z_p, context, image, shard_mb: float, chunk: int = 37, dtype=torch.float32
):
    """Write pairs through the cache writer in uneven chunks, as `cache-latents` would."""
    writer = GroupCacheWriter(folder, 0, shard_mb, dtype, fingerprint="vae-a")
    for start in range(0, len(z_q), chunk):
        rows = slice(start, start + chunk)
        writer.append(z_q[rows], z_p[rows], None if context is None else context[rows], image[rows])
    writer.close(int(image.max()) + 1)
    return writer


def sorted_rows(*tensors) -> torch.Tensor:
    """Rows of the concatenated (flattened) tensors in a canonical order, to compare as multisets."""
    rows = torch.cat([t.flatten(1).float() for t in tensors], dim=1)
    return rows[torch.from_numpy(__import__("numpy").lexsort(rows.T.numpy()[::-1].copy()))]


def test_shard_cache_yields_exactly_the_written_pairs_in_a_seeded_order(tmp_path):
    torch.manual_seed(0)
    n = 1000
    z_q, z_p, context = torch.randn(n, 2, 2, 2), torch.randn(n, 2, 2, 2), torch.randn(n, 3, 2, 2)
    image = torch.arange(n) % 250  # 4 passes over 250 images
    write_cache(tmp_path / "g", z_q, z_p, context, image, shard_mb=0.004)  # 4,194 bytes: 37 rows of 112
    source = ShardedPairs(tmp_path / "g", buffer_shards=3)
    assert (
        source.index["shard_rows"] == 37
        and len(source.index["shards"]) == 28
        and source.num_pairs == n
        and source.num_images == 250
    )
    everything = torch.ones(250, dtype=torch.bool)

    def epoch(e):
        return [b for _, _, b in source.batches(everything, 64, seed=5, epoch=e)]

    first = epoch(0)
    got = [torch.cat([b[i] for b in first]) for i in range(3)]
    # every pair once, with its own context (a reader that mixed rows across tensors would fail here)
    assert torch.equal(sorted_rows(*got), sorted_rows(z_q, z_p, context))
    # the order is a function of (seed, epoch) alone: what resuming relies on; epochs differ
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, epoch(0)))
    assert not torch.equal(torch.cat([b[0] for b in epoch(1)]), got[0])
    # float16 caches hold the float16 rounding of the same values
    write_cache(tmp_path / "h", z_q, z_p, context, image, shard_mb=0.004, dtype=torch.float16)
    half = [
        torch.cat(t)
        for t in zip(
            *(
                b
                for _, _, b in ShardedPairs(tmp_path / "h").batches(
                    everything, 64, seed=5, epoch=0, shuffle=False
                )
            )
        )
    ]
    assert half[0].dtype == torch.float16 and torch.equal(half[0], z_q.half())


def test_shard_reader_and_writer_never_hold_more_than_their_buffers(tmp_path):
    torch.manual_seed(0)
    n = 2000
    z_q, z_p = torch.randn(n, 8), torch.randn(n, 8)
    writer = write_cache(tmp_path / "g", z_q, z_p, None, torch.arange(n), shard_mb=0.002)  # 32 rows a shard
    shard_rows = writer.shard_rows
    assert shard_rows == 32 and len(writer.shards) == 63
    # the writer keeps at most one shard plus the chunk being appended, whatever n is
    assert writer.max_buffered < shard_rows + 37
    source = ShardedPairs(tmp_path / "g", buffer_shards=3)
    seen = sum(len(b[0]) for _, _, b in source.batches(torch.ones(n, dtype=torch.bool), 50, seed=0, epoch=0))
    assert seen == n
    # 3 shards at a time: a reader that loaded the whole cache would have held all 2,000 rows
    assert source.max_rows_held <= 3 * shard_rows


class _FakeVAE:
    """Two groups; z_q carries the image's pixel sum so a test can find each row's image."""

    num_groups = 2

    def __call__(self, x, noise_scale=1.0):
        total = x.flatten(1).sum(1, keepdim=True)  # (B, 1)
        prior = torch.distributions.Normal(torch.zeros(len(x), 3), 1.0)
        return SimpleNamespace(
            latents=[total.expand(-1, 3), total.expand(-1, 3) + 1],
            priors=[prior, prior],
            contexts=[None, torch.randn(len(x), 2)],
        )


def test_cache_latents_writes_every_image_once_per_pass_with_its_index(tmp_path):
    images = torch.arange(30, dtype=torch.float32)[:, None]  # "image" i has pixel sum i
    passes, batch = 3, 4

    def batches():
        for _ in range(passes):
            for start in range(0, 30, batch):
                yield images[start : start + batch], torch.arange(start, min(start + batch, 30))

    writers = [GroupCacheWriter(tmp_path / f"group_{k}", k, 0.0005, torch.float32, "vae-a") for k in range(2)]
    write_group_caches(_FakeVAE(), batches(), writers)
    for writer in writers:
        writer.close(30)
    for k in range(2):
        source = ShardedPairs(tmp_path / f"group_{k}")
        rows = [
            b
            for _, _, b in source.batches(
                torch.ones(30, dtype=torch.bool), 1000, seed=0, epoch=0, shuffle=False
            )
        ]
        z_q = torch.cat([r[0] for r in rows])
        assert source.num_pairs == 90 and source.group == k
        assert sorted((z_q[:, 0] - k).tolist()) == sorted(list(range(30)) * passes)
        assert (source.context_shape is None) == (k == 0)
        # the stored image index is the image the row came from
        wanted = torch.zeros(30, dtype=torch.bool)
        wanted[7] = True
        only_7 = torch.cat([b[0] for _, _, b in source.batches(wanted, 1000, seed=0, epoch=0)])
        assert only_7.shape[0] == passes and torch.all(only_7[:, 0] == 7 + k)
    assert not list(tmp_path.glob("*.partial"))
    # a folder whose index was never written is refused in one line
    (tmp_path / "group_9").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished latent cache"):
        ShardedPairs(tmp_path / "group_9")


class _Recording:
    """A pair source that records the images of the rows it hands to training (shuffled reads)."""

    def __init__(self, inner):
        self.inner, self.trained_on = inner, set()
        for name in ("num_images", "num_pairs", "group_shape", "context_shape", "fingerprint"):
            setattr(self, name, getattr(inner, name))

    def batches(self, wanted, batch_size, *, seed, epoch, shuffle=True, start=(0, 0)):
        for w, b, batch in self.inner.batches(
            wanted, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start=start
        ):
            if shuffle:
                self.trained_on.update(batch[0][:, 0].long().tolist())
            yield w, b, batch


def test_held_out_split_is_by_image_and_the_test_loss_is_of_the_kept_weights():
    torch.manual_seed(0)
    num_images, passes = 400, 4
    image = torch.arange(num_images).repeat(passes)  # every image in 4 pairs, as with cache.passes 4
    z_q = torch.cat([image[:, None].float(), 1 + torch.randn(len(image), 2)], 1)  # column 0: the image
    z_p = torch.cat([image[:, None].float(), torch.randn(len(image), 2)], 1)
    source = _Recording(TensorPairs(z_q, z_p, None, image))
    classifier, history = train_on_pairs(
        source, hidden=16, epochs=3, batch_size=64, val_fraction=0.2, test_fraction=0.2, seed=3
    )
    train, val, test = split_images(num_images, 0.2, 0.2, seed=3)
    assert (
        len(val) == len(test) == 80
        and len(set(train.tolist()) | set(val.tolist()) | set(test.tolist())) == 400
    )
    # a pair split would have trained on pairs of ~all 400 images; an image split never sees val or test
    assert source.trained_on == set(train.tolist())
    in_test = torch.isin(image, test)
    on_test = evaluate_classifier(classifier, z_q[in_test], z_p[in_test])
    assert history.test["loss"] == pytest.approx(on_test.loss, abs=1e-5)
    assert history.test["jsd"] == pytest.approx(on_test.jsd, abs=1e-6)
    assert history.best_val_loss == min(history.val_loss) and history.test["loss"] != history.best_val_loss


class _FaultyPairs(TensorPairs):
    """Hands training an inf row at (epoch, batch) ``at``, ``times`` times."""

    def __init__(self, *args, at=(1, 3), times=1):
        super().__init__(*args)
        self.at, self.left = at, times

    def batches(self, wanted, batch_size, *, seed, epoch, shuffle=True, start=(0, 0)):
        for w, b, (z_q, z_p, c) in super().batches(
            wanted, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, start=start
        ):
            if shuffle and (epoch, b) == self.at and self.left > 0:
                self.left -= 1
                z_q = z_q.clone()
                z_q[0] = float("inf")
            yield w, b, (z_q, z_p, c)


def test_a_non_finite_loss_rolls_back_with_a_lower_rate_and_gives_up_after_bounded_tries(capsys):
    torch.manual_seed(0)
    z_q, z_p = 1 + torch.randn(2000, 3), torch.randn(2000, 3)
    kwargs = dict(hidden=16, epochs=3, batch_size=64, checkpoint_every=10, seed=1)
    classifier, history = train_on_pairs(_FaultyPairs(z_q, z_p, None, times=1), group=4, **kwargs)
    # without the check the inf batch makes NaN weights; with it, one rollback and a finite result
    assert history.rollbacks == 1 and all(torch.isfinite(p).all() for p in classifier.parameters())
    assert "non-finite loss" in capsys.readouterr().out
    assert evaluate_classifier(classifier, z_q, z_p).loss < 1.35  # it still learned (1.386 = chance)
    with pytest.raises(
        NCEDivergedError, match=r"group 7: the NCE loss is (nan|inf) at step \d+ after 3 rollbacks"
    ):
        train_on_pairs(_FaultyPairs(z_q, z_p, None, times=100), group=7, **kwargs)


RESUME_JOB = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from ncp.priors import ShardedPairs, train_on_pairs
    cache, work, out = sys.argv[1:4]
    classifier, history = train_on_pairs(
        ShardedPairs(cache, buffer_shards=2), hidden=16, num_blocks=2, epochs=4, batch_size=32,
        val_fraction=0.1, test_fraction=0.1, seed=11, group=0, work_dir=work, checkpoint_every=7,
    )
    torch.save({"state": classifier.state_dict(), "history": history.__dict__}, out)
    """
)


def _run_job(tmp_path, work, out, kill=None):
    """Run the job to its end, or kill it at (step, fraction): that fraction of a checkpoint interval (7
    steps) after its state of that step or later is saved."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(tmp_path / "job.py"), str(tmp_path / "cache"), str(work), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill is None:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
        return output
    step, fraction = kill
    _, step_seconds = wait_for_saved_step(Path(work) / "resume.pt", step, proc)
    time.sleep(fraction * 7 * step_seconds)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate()
    return output


@pytest.mark.slow
def test_nce_killed_at_random_moments_resumes_to_the_uninterrupted_result_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    n = 3000
    z_q = 0.5 + torch.randn(n, 4, 4, 4)
    z_p, context = torch.randn(n, 4, 4, 4), torch.randn(n, 2, 4, 4)
    write_cache(tmp_path / "cache", z_q, z_p, context, torch.arange(n) % 1000, shard_mb=0.05)
    (tmp_path / "job.py").write_text(RESUME_JOB)
    _run_job(tmp_path, tmp_path / "work_a", tmp_path / "a.pt")
    rng = random.Random(0)
    resumed_at = []
    # 4 epochs of 75 steps: each kill lands inside a checkpoint interval after these steps, by the job's own
    # progress (a fixed delay after start once outlasted a whole run on a faster machine).
    for step in (70, 150, 230):
        output = _run_job(
            tmp_path, tmp_path / "work_b", tmp_path / "b.pt", kill=(step, rng.uniform(0.0, 1.0))
        )
        resumed_at += [line for line in output.splitlines() if "resuming" in line]
    assert not (tmp_path / "b.pt").exists()  # every kill landed before the end
    output = _run_job(tmp_path, tmp_path / "work_b", tmp_path / "b.pt")
    resumed_at += [line for line in output.splitlines() if "resuming" in line]
    assert any("step 0 " not in line for line in resumed_at), resumed_at  # some rerun resumed mid-way
    a, b = (
        torch.load(tmp_path / "a.pt", weights_only=False),
        torch.load(tmp_path / "b.pt", weights_only=False),
    )
    # bitwise: same data order (a function of seed and epoch), same optimiser state, one thread
    assert a["history"] == b["history"]
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_classifier_files_refuse_another_group_another_vae_and_an_old_format(tmp_path):
    torch.manual_seed(0)
    classifier = build_classifier((3,), (2,), hidden=8)
    vae_a, vae_b = tmp_path / "vae_a.pt", tmp_path / "vae_b.pt"
    vae_a.write_bytes(b"checkpoint A")
    vae_b.write_bytes(b"checkpoint B")
    save_classifier(classifier, tmp_path / "group_1.pt", group=1, vae_fingerprint=vae_fingerprint(vae_a))
    loaded = load_classifier(tmp_path / "group_1.pt", group=1, vae_fingerprint=vae_fingerprint(vae_a))
    z, c = torch.randn(5, 3), torch.randn(5, 2)
    assert torch.equal(loaded(z, c), classifier.eval()(z, c))
    with pytest.raises(ValueError, match="holds the classifier of group 1, expected group 0"):
        load_ncp_prior([tmp_path / "group_1.pt"], vae_checkpoint=vae_a)
    save_classifier(classifier, tmp_path / "group_0.pt", group=0, vae_fingerprint=vae_fingerprint(vae_a))
    assert load_ncp_prior([tmp_path / "group_0.pt"], vae_checkpoint=vae_a).num_groups == 1
    with pytest.raises(ValueError, match=r"trained on the latents of VAE \w+, not of this VAE"):
        load_ncp_prior([tmp_path / "group_0.pt"], vae_checkpoint=vae_b)
    # the untagged format of earlier versions
    torch.save(
        {"group": 0, "build_args": classifier.build_args, "state_dict": classifier.state_dict()},
        tmp_path / "old.pt",
    )
    with pytest.raises(ValueError, match="not an NCE classifier file of format 'ncp-nce-classifier' v2"):
        load_classifier(tmp_path / "old.pt", group=0)


@pytest.fixture(scope="module")
def micro_vae(tmp_path_factory):
    """An (untrained) NVAE of the micro params, saved as stage 1 would, and 96 binarised training images."""
    from ncp.config import ExperimentConfig
    from ncp.data.datasets import ImageSet, save_image_set
    from ncp.models.registry import build_vae, save_vae_checkpoint
    from ncp.params import load_params_files

    root = tmp_path_factory.mktemp("micro_vae")
    cfg = ExperimentConfig.from_params(
        load_params_files([REPO / "params/default.yaml", REPO / "params/test/micro.yaml"])
    )
    torch.manual_seed(0)
    args = dataclasses.asdict(cfg.vae.backbone)
    save_vae_checkpoint(build_vae("nvae", args), "nvae", args, root / "vae.pt")
    images = (torch.rand(96, 1, 32, 32) * 255).to(torch.uint8)
    save_image_set(ImageSet(images, None, "mnist5k", "train", binary=True), root / "train.pt")
    return cfg, root


def test_stream_mode_draws_pairs_like_the_cache_and_trains_a_loadable_classifier(micro_vae, tmp_path):
    from dataclasses import replace

    from ncp import cache_latents, train_nce
    from ncp.priors.latent_stream import StreamedPairs

    cfg, root = micro_vae
    vae, train = root / "vae.pt", root / "train.pt"
    k = 3  # the last group: it has a context
    shards = replace(cfg.cache, passes=4, batch_size=32, shard_mb=0.05)
    cache_latents.run(shards, 0, "cpu", vae, train, [tmp_path / f"shards/group_{g}" for g in range(4)])
    stream = replace(cfg.cache, mode="stream", batch_size=32)
    cache_latents.run(stream, 0, "cpu", vae, train, [tmp_path / f"stream/group_{g}" for g in range(4)])
    everything = torch.ones(96, dtype=torch.bool)
    cached = [
        torch.cat(t).float()
        for t in zip(
            *(
                b
                for _, _, b in ShardedPairs(tmp_path / f"shards/group_{k}").batches(
                    everything, 500, seed=0, epoch=0
                )
            )
        )
    ]
    source = StreamedPairs(vae, train, k, vae_fingerprint(vae), torch.device("cpu"))
    drawn = [
        torch.cat(t).float()
        for t in zip(*(b for e in range(4) for _, _, b in source.batches(everything, 32, seed=1, epoch=e)))
    ]
    # the same images through the same VAE: 4 cache passes and 4 streamed epochs agree in distribution
    for name, a, b in zip(("z_q", "z_p", "context"), cached, drawn):
        assert a.shape == b.shape, name
        se = (a.var() / a.numel() + b.var() / b.numel()).sqrt() * 10  # pixels within an image correlate
        assert abs(a.mean() - b.mean()) < se and a.std() == pytest.approx(b.std(), rel=0.05), name
    # a batch is a function of (seed, epoch, batch): a resumed job sees the same pairs
    again = next(source.batches(everything, 32, seed=1, epoch=2, start=(0, 1)))[2]
    assert torch.equal(
        again[0], next(b for _, i, b in source.batches(everything, 32, seed=1, epoch=2) if i == 1)[0]
    )
    # stream mode writes only an index (no disk) and the NCE job draws the pairs itself
    assert not list((tmp_path / f"stream/group_{k}").glob("shard_*"))
    with pytest.raises(ValueError, match="index without pairs"):
        ShardedPairs(tmp_path / f"stream/group_{k}")
    nce = replace(cfg.nce, epochs=1, batch_size=32, val_fraction=0.2, test_fraction=0.2)
    out, metrics = tmp_path / "nce.pt", tmp_path / "nce.json"
    with pytest.raises(ValueError, match="needs --checkpoint and --train-data"):
        train_nce.run(nce, 0, "cpu", tmp_path / f"stream/group_{k}", out, metrics)
    train_nce.run(nce, 0, "cpu", tmp_path / f"stream/group_{k}", out, metrics, tmp_path / "work", vae, train)
    assert not (tmp_path / "work").exists()  # the resume state is removed once the outputs exist
    assert load_classifier(out, group=k, vae_fingerprint=vae_fingerprint(vae)) is not None
    origin = json.loads(metrics.read_text())["provenance"]  # the NCE diagnostics trace to their job too
    assert origin["job"] == f"train-nce group {k}" and origin["seed"] == 0


def test_stream_mode_draws_from_the_first_num_images_the_cache_index_names(micro_vae, tmp_path):
    # Fails if the NCE job ignored cache.num_images in stream mode (every training image each epoch: the
    # paper smoke's 30 stream jobs would each run the VAE over all its images).
    from dataclasses import replace

    from ncp import cache_latents, train_nce
    from ncp.priors.latent_cache import read_index

    cfg, root = micro_vae
    vae, train = root / "vae.pt", root / "train.pt"
    stream = replace(cfg.cache, mode="stream", num_images=40)
    folders = [tmp_path / f"group_{g}" for g in range(4)]
    cache_latents.run(stream, 0, "cpu", vae, train, folders)
    index = read_index(folders[2])
    assert index["num_images"] == 40  # of the 96 training images
    source = train_nce._pair_source(index, folders[2], cfg.nce, torch.device("cpu"), vae, train)
    assert source.num_pairs == source.num_images == 40
    drawn = sum(
        len(b[0]) for _, _, b in source.batches(torch.ones(40, dtype=torch.bool), 16, seed=0, epoch=0)
    )
    assert drawn == 40
