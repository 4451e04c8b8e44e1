"""Stage-1 backbones (NVAE, the single-group MLP and conv VAEs) behind one contract (base.py)."""
