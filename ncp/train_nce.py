"""Stage 2b (`ncp train-nce`): the binary classifier D_k of one latent group (paper Eq. 4).

D_k(z_k, c(z_<k)) tells samples of q(z_k | z_<k) (label 1) from samples of p(z_k | z_<k) (label 0)
drawn with the same z_<k; its logit is log r_k. Groups are independent jobs.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from ncp.config import NCEConfig
from ncp.priors.nce import evaluate_classifier, train_classifier
from ncp.runtime import atomic_save, load_torch, pick_device, seed_everything, write_json


def run(nce: NCEConfig, seed: int, device: str, group_latents: Path, out: Path, metrics_out: Path) -> None:
    """Train D_k on one group's cached latents; write the classifier and its diagnostics."""
    print(f"train-nce started at {datetime.now().isoformat()}", flush=True)
    cached = load_torch(group_latents)
    group = int(cached["group"])
    seed_everything(seed + 1000 * (group + 1))
    torch_device = pick_device(device)
    context = cached.get("context")
    classifier, history = train_classifier(
        cached["z_q"],
        cached["z_p"],
        context,
        hidden=nce.hidden,
        num_blocks=nce.num_blocks,
        epochs=nce.epochs,
        batch_size=nce.batch_size,
        lr=nce.lr,
        weight_decay=nce.weight_decay,
        val_fraction=nce.val_fraction,
        seed=seed + group,
        device=torch_device,
    )
    # L* is the held-out loss of the kept weights; log r statistics are over all cached pairs.
    on_all_pairs = evaluate_classifier(classifier, cached["z_q"], cached["z_p"], context, device=torch_device)
    final_loss = history.best_val_loss
    diagnostics = {
        "final_loss": final_loss,
        "js_estimate": math.log(2.0) - final_loss / 2.0,
        "train_loss_curve": history.train_loss,
        "val_loss_curve": history.val_loss,
        "best_epoch": history.best_epoch,
        "mean_log_r_q": on_all_pairs.mean_log_r_q,
        "mean_log_r_p": on_all_pairs.mean_log_r_p,
        "accuracy": on_all_pairs.accuracy,
    }
    atomic_save(
        {
            "group": group,
            "build_args": classifier.build_args,
            "state_dict": {k: v.cpu() for k, v in classifier.state_dict().items()},
            "history": asdict(history),
        },
        out,
    )
    write_json({"group": group, "num_pairs": int(cached["z_q"].shape[0]), **diagnostics}, metrics_out)
    print(
        f"train-nce group {group}: L* = {final_loss:.4f}; finished at {datetime.now().isoformat()}",
        flush=True,
    )
