"""Stage 2b (`ncp train-nce`): the binary classifier D_k of one latent group (paper Eq. 4).

D_k(z_k, c(z_<k)) tells samples of q(z_k | z_<k) (label 1) from samples of p(z_k | z_<k) (label 0)
drawn with the same z_<k; its logit is log r_k. Groups are independent jobs. The group's cached pairs
are read from its shard folder through a bounded shuffle buffer; the training state is saved in the
job's work folder, so a killed job resumes where it stopped. With ``cache.mode: stream`` the pairs are
drawn by the frozen VAE instead (`ncp.priors.latent_stream`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from ncp.config import NCEConfig
from ncp.priors.checkpoints import save_classifier, vae_fingerprint
from ncp.priors.latent_cache import PairSource, ShardedPairs, read_index, split_images
from ncp.priors.latent_stream import StreamedPairs
from ncp.priors.nce import NCEDiagnostics, train_on_pairs
from ncp.provenance import with_provenance
from ncp.runtime import pick_device, seed_everything, write_json


def _pair_source(index: dict, folder: Path, nce: NCEConfig, device, checkpoint, train_data) -> PairSource:
    """The shard reader, or (``cache.mode: stream``) the VAE that draws the pairs."""
    if index["mode"] == "shards":
        return ShardedPairs(folder, buffer_shards=nce.buffer_shards)
    if checkpoint is None or train_data is None:
        raise ValueError(
            f"{folder} is a stream-mode cache: `ncp train-nce` needs --checkpoint and --train-data"
        )
    if vae_fingerprint(checkpoint) != index["vae_fingerprint"]:
        raise ValueError(f"{checkpoint} is not the VAE that wrote {folder}: rerun `ncp cache-latents`")
    group, fingerprint, num_images = int(index["group"]), index["vae_fingerprint"], int(index["num_images"])
    return StreamedPairs(checkpoint, train_data, group, fingerprint, device, num_images)


def run(
    nce: NCEConfig,
    seed: int,
    device: str,
    group_latents: Path,
    out: Path,
    metrics_out: Path,
    work_dir: Path | None = None,
    checkpoint: Path | None = None,
    train_data: Path | None = None,
) -> None:
    """Train D_k on one group's pairs (cached, or drawn by the VAE); write the classifier and diagnostics."""
    print(f"train-nce started at {datetime.now().isoformat()}", flush=True)
    index = read_index(group_latents)
    group = int(index["group"])
    seed_everything(seed + 1000 * (group + 1))
    torch_device = pick_device(device)
    source = _pair_source(index, group_latents, nce, torch_device, checkpoint, train_data)
    classifier, history = train_on_pairs(
        source,
        hidden=nce.hidden,
        num_blocks=nce.num_blocks,
        epochs=nce.epochs,
        batch_size=nce.batch_size,
        lr=nce.lr,
        weight_decay=nce.weight_decay,
        val_fraction=nce.val_fraction,
        test_fraction=nce.test_fraction,
        seed=seed + group,
        device=torch_device,
        group=group,
        work_dir=work_dir,
        checkpoint_every=nce.checkpoint_every,
    )
    # Every figure below is on the test images: used neither to train nor to choose the kept epoch.
    _, _, test_images = split_images(source.num_images, nce.val_fraction, nce.test_fraction, seed + group)
    on_test = NCEDiagnostics(**history.test)
    diagnostics = {
        "final_loss": on_test.loss,  # L*: the kept weights' loss on the test images
        "js_estimate": on_test.jsd,
        "selection_loss": history.best_val_loss,  # the val images' loss that chose the epoch (biased low)
        "train_loss_curve": history.train_loss,
        "val_loss_curve": history.val_loss,
        "best_epoch": history.best_epoch,
        "rollbacks": history.rollbacks,
        "mean_log_r_q": on_test.mean_log_r_q,
        "mean_log_r_p": on_test.mean_log_r_p,
        "accuracy": on_test.accuracy,
        "split": "by image: train / val (chooses the epoch) / test (final_loss, js_estimate, log r, accuracy)",
    }
    save_classifier(
        classifier, out, group=group, vae_fingerprint=source.fingerprint, extra={"history": asdict(history)}
    )
    record = {
        "group": group,
        "num_pairs": source.num_pairs,
        "num_images": source.num_images,
        "num_test_images": len(test_images),
        **diagnostics,
    }
    write_json(with_provenance(record, f"train-nce group {group}", nce, seed, torch_device), metrics_out)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)  # the outputs are complete: the resume state is spent
    print(
        f"train-nce group {group}: L* = {on_test.loss:.4f} on {len(test_images)} test images; "
        f"finished at {datetime.now().isoformat()}",
        flush=True,
    )
