"""Evaluation metrics: FID / KID (fid.py, feature_nets.py), latent MMD (mmd.py), IW NLL (nll.py).

Import from the submodules (e.g. ``from ncp.metrics.fid import fid_against_reference``); nothing
is imported here so that loading one metric does not pull in the others' dependencies.
"""
