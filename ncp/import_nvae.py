"""`ncp import-nvae`: turn an official NVAE checkpoint into this project's checkpoint format.

The official file holds ``state_dict`` and the training ``args`` as a pickled ``argparse.Namespace``;
it is read with ``weights_only=True`` and only that class allow-listed, so nothing else is unpickled.
The converted file lets an experiment skip stage 1 (``vae.init_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

from ncp.models.nvae.checkpoint import load_nvae_checkpoint
from ncp.models.nvae.model import NVAE
from ncp.models.registry import save_vae_checkpoint


def run(checkpoint: Path, out: Path) -> None:
    """Rebuild NVAE from the checkpoint's args, load its weights strictly, save in our format."""
    args, state_dict = load_nvae_checkpoint(checkpoint)
    # The checkpoint holds NVAE's whole command line; only its architecture flags build the model (here,
    # and nowhere else, are the training flags accepted and dropped).
    model, training_flags = NVAE.from_official_args(args)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ValueError(
            f"{checkpoint}: weights do not fit the NVAE its args describe ({first_line})"
        ) from None
    save_vae_checkpoint(model, "nvae", model.args, out, imported_from=str(checkpoint))
    print(f"imported NVAE with {model.num_groups} latent groups from {checkpoint} -> {out}")
    if training_flags:
        print(f"dropped NVAE's training flags (not part of the model): {', '.join(training_flags)}")
