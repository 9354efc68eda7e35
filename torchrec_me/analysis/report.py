"""The collapse report: IA and spectra of every table, set and field, and the live log row."""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.sharded import VARIANTS, EmbeddingTable, _gram_matrices, _is_collective, find_embedding_tables
from torchrec_me.analysis.spectrum import information_abundance, normalized_spectrum, singular_values_from_gram

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


def _stats(gram: Tensor) -> Tuple[Optional[float], Optional[List[float]]]:
    """(IA, normalised spectrum) of a (D, D) Gram."""
    sv = singular_values_from_gram(gram)
    return _finite(information_abundance(sv)), _spectrum_list(sv)


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

    by_feature: Dict[str, List[EmbeddingTable]] = {}
    for t in sorted(tables.values(), key=lambda t: (t.set_index, t.name)):
        by_feature.setdefault(t.feature, []).append(t)

    # Group names: "field:{feature}" (its tables concatenated) or "table:{name}".
    groups: Dict[str, List[str]] = {}
    concat: Dict[str, bool] = {}
    for feature, ts in by_feature.items():
        concat[feature] = concat_fields and len({t.num_rows for t in ts}) == 1
        if concat[feature]:
            groups[f"field:{feature}"] = [t.name for t in ts]
        else:
            groups.update({f"table:{t.name}": [t.name] for t in ts})

    variants: List[Optional[Mapping[str, Tensor]]] = [None]
    if frequencies is not None:
        masks: Dict[str, Tensor] = {}
        freqs: Dict[str, Tensor] = {}
        for gname, names in groups.items():
            freq = frequencies.row_frequency(names[0])
            masks[gname] = (freq > 0).double()
            freqs[gname] = freq
        variants += [masks, freqs]
    grams = _gram_matrices(tables, groups, variants, chunk_rows)

    # The tables' Grams are the diagonal blocks of their group's Gram.
    table_grams: Dict[str, List[Tensor]] = {}
    for gname, names in groups.items():
        shift = 0
        for n in names:
            d = tables[n].dim
            table_grams[n] = [g[shift : shift + d, shift : shift + d] for g in grams[gname]]
            shift += d

    def trained_count(feature: str) -> Optional[int]:
        """Rows of ``feature`` looked up at least once (None without frequencies)."""
        return None if frequencies is None else int((frequencies.counts(feature) > 0).sum())

    set_ids = sorted({t.set_index for t in tables.values()})
    sets_out: List[Dict[str, Any]] = []
    for k in set_ids:
        entries: Dict[str, Dict[str, Any]] = {}
        for t in sorted((t for t in tables.values() if t.set_index == k), key=lambda t: t.name):
            gs = table_grams[t.name]
            ia_all, sp_all = _stats(gs[0])
            ia_tr, sp_tr = _stats(gs[1]) if frequencies is not None else (None, None)
            ia_fw, sp_fw = _stats(gs[2]) if frequencies is not None else (None, None)
            entries[t.name] = {
                "feature": t.feature,
                "dim": t.dim,
                "num_rows": t.num_rows,
                "trained_rows": trained_count(t.feature),
                "ia_all_rows": ia_all,
                "ia_trained_rows": ia_tr,
                "ia_freq_weighted": ia_fw,
                "spectrum_all_rows": sp_all,
                "spectrum_trained_rows": sp_tr,
                "spectrum_freq_weighted": sp_fw,
            }
        dims = {e["dim"] for e in entries.values()}
        sets_out.append(
            {
                "set": k,
                "dim": dims.pop() if len(dims) == 1 else None,
                "tables": entries,
                "mean_ia_all_rows": _mean([e["ia_all_rows"] for e in entries.values()]),
                "mean_ia_trained_rows": _mean([e["ia_trained_rows"] for e in entries.values()]),
                "mean_ia_freq_weighted": _mean([e["ia_freq_weighted"] for e in entries.values()]),
            }
        )

    entry_of = {name: e for s in sets_out for name, e in s["tables"].items()}
    fields_out: Dict[str, Dict[str, Any]] = {}
    for feature, ts in by_feature.items():
        per_set = [entry_of[t.name] for t in ts]
        field: Dict[str, Any] = {
            "num_rows": ts[0].num_rows if concat[feature] else None,
            "trained_rows": trained_count(feature),
            "sets": [t.set_index for t in ts],
            "dims": [t.dim for t in ts],
            "ia_per_set_all_rows": [e["ia_all_rows"] for e in per_set],
            "ia_per_set_trained_rows": [e["ia_trained_rows"] for e in per_set],
            "ia_concat_all_rows": None,
            "ia_concat_trained_rows": None,
            "ia_concat_freq_weighted": None,
            "spectrum_concat_all_rows": None,
            "spectrum_concat_trained_rows": None,
        }
        if concat[feature]:
            gs = grams[f"field:{feature}"]
            field["ia_concat_all_rows"], field["spectrum_concat_all_rows"] = _stats(gs[0])
            if frequencies is not None:
                field["ia_concat_trained_rows"], field["spectrum_concat_trained_rows"] = _stats(gs[1])
                field["ia_concat_freq_weighted"] = _stats(gs[2])[0]
        fields_out[feature] = field

    return {
        "num_sets": len(set_ids),
        "sets": sets_out,
        "fields": fields_out,
        "variants": dict(VARIANTS),
    }


def ia_log_record(step: int, report: Mapping[str, Any], variant: str = "all_rows") -> Dict[str, Any]:
    """One JSON-lines row ``{"step": step, "ia": {"set0": mean IA, ...}}`` of a report.

    Why: :func:`torchrec_me.analysis.plots.plot_ia_over_steps` reads these rows to draw
    IA over training; ``variant`` is ``all_rows``, ``trained_rows`` or ``freq_weighted``.
    """
    key = f"mean_ia_{variant}"
    return {"step": int(step), "ia": {f"set{s['set']}": s[key] for s in report["sets"]}}
