"""The collapse report: IA and spectra of every table, set and field, and the live log row."""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.sharded import VARIANTS, EmbeddingTable, _gram_matrices, _is_collective, find_embedding_tables
from torchrec_me.analysis.spectrum import information_abundance, normalized_spectrum, singular_values_from_gram

# The row-weight variants in the order of each group's Gram list: all rows always; the
# trained-row mask and the frequencies only with a tracker.
_ROW_VARIANTS = ("all_rows", "trained_rows", "freq_weighted")

Stats = Tuple[Optional[float], Optional[List[float]]]


def _finite(x: float) -> Optional[float]:
    """None for NaN/inf, so the report stays strict JSON."""
    return None if math.isnan(x) or math.isinf(x) else float(x)


def _spectrum_list(sv: Tensor) -> Optional[List[float]]:
    """(D,) singular values -> D normalised floats, None when undefined (zero table)."""
    s = normalized_spectrum(sv)
    if s.numel() == 0 or bool(torch.isnan(s).any()):
        return None
    return [float(v) for v in s]


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the defined values; None when none is."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _stats(gram: Tensor) -> Stats:
    """(IA, normalised spectrum) of a (D, D) Gram."""
    sv = singular_values_from_gram(gram)
    return _finite(information_abundance(sv)), _spectrum_list(sv)


def _variant_stats(grams: Sequence[Tensor]) -> Dict[str, Stats]:
    """(IA, spectrum) per row variant; (None, None) for the variants not computed."""
    return {v: _stats(grams[i]) if i < len(grams) else (None, None) for i, v in enumerate(_ROW_VARIANTS)}


@dataclass
class _Grouping:
    """How the tables are grouped for the Gram computation.

    ``by_feature``: each feature's tables in set order. ``concat``: whether a feature's
    tables are concatenated along D (one group ``field:{feature}``) or each is a group
    ``table:{name}`` of its own. ``groups``: group name -> table names, in D order.
    """

    by_feature: Dict[str, List[EmbeddingTable]]
    concat: Dict[str, bool]
    groups: Dict[str, List[str]]


def _group_tables(tables: Mapping[str, EmbeddingTable], concat_fields: bool) -> _Grouping:
    """Group each field's tables: concatenated when asked and their row counts agree."""
    by_feature: Dict[str, List[EmbeddingTable]] = {}
    for t in sorted(tables.values(), key=lambda t: (t.set_index, t.name)):
        by_feature.setdefault(t.feature, []).append(t)
    groups: Dict[str, List[str]] = {}
    concat: Dict[str, bool] = {}
    for feature, ts in by_feature.items():
        concat[feature] = concat_fields and len({t.num_rows for t in ts}) == 1
        if concat[feature]:
            groups[f"field:{feature}"] = [t.name for t in ts]
        else:
            groups.update({f"table:{t.name}": [t.name] for t in ts})
    return _Grouping(by_feature, concat, groups)


def _row_weights(
    frequencies: Optional[IdFrequencyTracker], groups: Mapping[str, Sequence[str]]
) -> List[Optional[Mapping[str, Tensor]]]:
    """Row weights per variant of ``_ROW_VARIANTS``: None (all rows), then mask and counts."""
    if frequencies is None:
        return [None]
    freqs = {gname: frequencies.row_frequency(names[0]) for gname, names in groups.items()}
    masks = {gname: (freq > 0).double() for gname, freq in freqs.items()}
    return [None, masks, freqs]


def _table_grams(
    tables: Mapping[str, EmbeddingTable], groups: Mapping[str, Sequence[str]], grams: Mapping[str, List[Tensor]]
) -> Dict[str, List[Tensor]]:
    """Each table's Grams (one per variant): the diagonal blocks of its group's Grams."""
    out: Dict[str, List[Tensor]] = {}
    for gname, names in groups.items():
        shift = 0
        for n in names:
            d = tables[n].dim
            out[n] = [g[shift : shift + d, shift : shift + d] for g in grams[gname]]
            shift += d
    return out


def _trained_rows(frequencies: Optional[IdFrequencyTracker], feature: str) -> Optional[int]:
    """Rows of ``feature`` looked up at least once (None without frequencies)."""
    return None if frequencies is None else int((frequencies.counts(feature) > 0).sum())


def _table_entry(t: EmbeddingTable, grams: Sequence[Tensor], trained_rows: Optional[int]) -> Dict[str, Any]:
    """The report entry of one table: sizes, then IA and spectrum per variant."""
    stats = _variant_stats(grams)
    entry: Dict[str, Any] = {"feature": t.feature, "dim": t.dim, "num_rows": t.num_rows, "trained_rows": trained_rows}
    entry.update({f"ia_{v}": stats[v][0] for v in _ROW_VARIANTS})
    entry.update({f"spectrum_{v}": stats[v][1] for v in _ROW_VARIANTS})
    return entry


def _set_entry(k: int, entries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The report entry of set ``k`` from its tables' entries: common dim and mean IAs."""
    dims = {e["dim"] for e in entries.values()}
    out: Dict[str, Any] = {"set": k, "dim": dims.pop() if len(dims) == 1 else None, "tables": entries}
    out.update({f"mean_ia_{v}": _mean([e[f"ia_{v}"] for e in entries.values()]) for v in _ROW_VARIANTS})
    return out


def _field_entry(
    ts: Sequence[EmbeddingTable],
    per_set: Sequence[Mapping[str, Any]],
    concat_grams: Optional[Sequence[Tensor]],
    trained_rows: Optional[int],
) -> Dict[str, Any]:
    """The report entry of one field: its per-set IAs and, if concatenated, the concat stats."""
    stats = _variant_stats(concat_grams) if concat_grams is not None else {v: (None, None) for v in _ROW_VARIANTS}
    field: Dict[str, Any] = {
        "num_rows": ts[0].num_rows if concat_grams is not None else None,
        "trained_rows": trained_rows,
        "sets": [t.set_index for t in ts],
        "dims": [t.dim for t in ts],
        "ia_per_set_all_rows": [e["ia_all_rows"] for e in per_set],
        "ia_per_set_trained_rows": [e["ia_trained_rows"] for e in per_set],
    }
    field.update({f"ia_concat_{v}": stats[v][0] for v in _ROW_VARIANTS})
    field.update({f"spectrum_concat_{v}": stats[v][1] for v in ("all_rows", "trained_rows")})
    return field


def collapse_report(
    model: Union[nn.Module, Mapping[str, Any]],
    frequencies: Optional[IdFrequencyTracker] = None,
    chunk_rows: int = 65536,
    concat_fields: bool = True,
) -> Dict[str, Any]:
    """Information abundance and normalised spectra of every table, set and field.

    Collective when tables are sharded (all ranks call it; all get the same report).
    An unsynced ``frequencies`` tracker is synced first in that case.

    Args:
        model: a module, DMP model or state dict with ``set{k}__{feature}`` tables.
        frequencies: id counts from training; adds the ``trained_rows`` and
            ``freq_weighted`` variants (None in the report without it).
        chunk_rows: rows per step of the Gram computation (memory bound).
        concat_fields: also compute each field's K tables concatenated along D
            (needs the cross-set blocks, i.e. every table crosses the network once).

    Returns:
        dict, JSON-serialisable; undefined numbers (e.g. no trained rows) are None::

            {"num_sets": K,
             "sets": [{"set": k, "dim": D_k (None if dims differ),
                       "tables": {name: {"feature", "dim", "num_rows", "trained_rows",
                                         "ia_all_rows", "ia_trained_rows", "ia_freq_weighted",
                                         "spectrum_all_rows", "spectrum_trained_rows",
                                         "spectrum_freq_weighted"}},
                       "mean_ia_all_rows", "mean_ia_trained_rows", "mean_ia_freq_weighted"}],
             "fields": {feature: {"num_rows", "trained_rows", "sets": [k...], "dims": [D_k...],
                                  "ia_per_set_all_rows": [...], "ia_per_set_trained_rows": [...],
                                  "ia_concat_all_rows", "ia_concat_trained_rows",
                                  "ia_concat_freq_weighted", "spectrum_concat_all_rows",
                                  "spectrum_concat_trained_rows"}},
             "variants": {variant: what it means}}
    """
    tables = find_embedding_tables(model)
    if not tables:
        raise ValueError("model has no embedding_bags tables")
    if frequencies is not None and not frequencies.is_synced and _is_collective(list(tables.values())):
        frequencies = frequencies.synced()
    grouping = _group_tables(tables, concat_fields)
    grams = _gram_matrices(tables, grouping.groups, _row_weights(frequencies, grouping.groups), chunk_rows)
    table_grams = _table_grams(tables, grouping.groups, grams)

    sets_out = []
    for k in sorted({t.set_index for t in tables.values()}):
        members = sorted((t for t in tables.values() if t.set_index == k), key=lambda t: t.name)
        entries = {t.name: _table_entry(t, table_grams[t.name], _trained_rows(frequencies, t.feature)) for t in members}
        sets_out.append(_set_entry(k, entries))

    entry_of = {name: e for s in sets_out for name, e in s["tables"].items()}
    fields_out = {
        feature: _field_entry(
            ts,
            [entry_of[t.name] for t in ts],
            grams[f"field:{feature}"] if grouping.concat[feature] else None,
            _trained_rows(frequencies, feature),
        )
        for feature, ts in grouping.by_feature.items()
    }
    return {"num_sets": len(sets_out), "sets": sets_out, "fields": fields_out, "variants": dict(VARIANTS)}


def ia_log_record(step: int, report: Mapping[str, Any], variant: str = "all_rows") -> Dict[str, Any]:
    """One JSON-lines row ``{"step": step, "ia": {"set0": mean IA, ...}}`` of a report.

    Why: :func:`torchrec_me.analysis.plots.plot_ia_over_steps` reads these rows to draw
    IA over training; ``variant`` is ``all_rows``, ``trained_rows`` or ``freq_weighted``.
    """
    key = f"mean_ia_{variant}"
    return {"step": int(step), "ia": {f"set{s['set']}": s[key] for s in report["sets"]}}
