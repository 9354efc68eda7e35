"""Embedding-collapse analysis (arXiv 2310.04400): spectra and information abundance.

``spectrum`` turns a D x D Gram matrix into singular values and IA; ``sharded`` builds
those Grams for plain or DMP-sharded tables without gathering them; ``frequency``
tracks which rows training touched; ``report`` assembles :func:`collapse_report`;
``plots`` (matplotlib, imported on demand) draws reports.
"""

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.report import collapse_report, ia_log_record
from torchrec_me.analysis.sharded import VARIANTS, EmbeddingTable, find_embedding_tables, gram_matrices
from torchrec_me.analysis.spectrum import (
    information_abundance,
    normalized_spectrum,
    singular_values,
    singular_values_from_gram,
)
from torchrec_me.modules.naming import parse_table_name

__all__ = [
    "VARIANTS",
    "EmbeddingTable",
    "IdFrequencyTracker",
    "collapse_report",
    "find_embedding_tables",
    "gram_matrices",
    "ia_log_record",
    "information_abundance",
    "normalized_spectrum",
    "parse_table_name",
    "singular_values",
    "singular_values_from_gram",
]
