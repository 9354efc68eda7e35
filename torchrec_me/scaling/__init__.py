"""Scaling studies: cost counting, grid sweeps and power-law fits (``torchrec-me sweep``, ``torchrec-me fit``)."""
