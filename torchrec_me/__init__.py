"""torchrec_me: multi-embedding recommendation models on TorchRec (arXiv 2310.04400)."""

__version__ = "0.1.0"
