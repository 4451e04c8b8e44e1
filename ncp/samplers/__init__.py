"""GroupSamplers that draw one latent group from the NCP during ancestral sampling."""

from ncp.samplers.langevin import LangevinSampler
from ncp.samplers.sir import SIRGroupStats, SIRSampler

__all__ = ["LangevinSampler", "SIRGroupStats", "SIRSampler"]
