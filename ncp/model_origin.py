"""The origin of a run's figures: which image decoder its VAE has, and whether its data were real (the
code, params and machine behind a file are ncp/provenance.py's record; this is about the model and data).

Both facts travel with the VAE checkpoint (``ncp train-vae`` writes them; ``ncp sample`` copies them into
every sample file; the FID, MMD and NLL records carry them on), so every table row can say which decoder
its model has (the paper's NVAEs use a Gaussian decoder, NVAE's released ones a discretised logistic
mixture: NVlabs/NVAE issue 30) and a smoke run on a synthetic stand-in can never pass for a real one.
"""

from __future__ import annotations

from collections.abc import Iterable

from ncp.data.stand_in import STAND_IN_WARNING

UNKNOWN_DATA = {"dataset": None, "synthetic": False}


def decoder_label(model) -> str:
    """A short name of the model's image decoder, e.g. "Gaussian" or "DMoL (10)"."""
    config = getattr(model, "config", None)
    likelihood = getattr(config, "likelihood", None)
    if likelihood is None:  # the MLP VAE has only a Bernoulli decoder
        likelihood = "bernoulli"
    if likelihood == "dmol":
        return f"DMoL ({config.num_mixture_dec})"  # discretised mixture of logistics, NVAE's default
    return {"normal": "Gaussian", "bernoulli": "Bernoulli"}.get(likelihood, str(likelihood))


def model_origin_of(model, checkpoint: dict) -> dict:
    """Decoder and data of a VAE checkpoint (``checkpoint`` the dict as saved; older ones lack ``data``)."""
    return {"decoder": decoder_label(model), **UNKNOWN_DATA, **checkpoint.get("data", {})}


def checkpoint_origin(model, checkpoint_path) -> dict:
    """``model_origin_of`` of the checkpoint file ``model`` was loaded from (its tensors memory-mapped)."""
    import torch

    saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return model_origin_of(model, saved)


def merge(records: Iterable[dict | None]) -> dict:
    """One origin for several records of a run: synthetic if any is; decoders joined if they differ."""
    found = [r for r in records if r]
    if not found:
        return {}
    decoders = sorted({r["decoder"] for r in found if r.get("decoder")})
    return {
        "decoder": " / ".join(decoders) or None,
        "dataset": next((r["dataset"] for r in found if r.get("dataset")), None),
        "synthetic": any(r.get("synthetic") for r in found),
    }


def notes(origin: dict) -> list[str]:
    """Table notes: a stand-in warning first (where it applies), then the decoder."""
    lines = []
    if origin.get("synthetic"):
        lines.append(
            f"**{STAND_IN_WARNING}**: the files of dataset `{origin.get('dataset')}` were absent, so this "
            "smoke run used synthetic stand-in data of its shape; no figure here measures a model of real images"
        )
    if origin.get("decoder"):
        lines.append(f"image decoder of ours: {origin['decoder']}")
    return lines
