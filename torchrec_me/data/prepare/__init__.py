"""The offline converter: raw Criteo, Avazu and MovieLens files -> a prepared Parquet dataset.

``torchrec-me prepare DATASET`` runs here once, before training; the online readers in
:mod:`torchrec_me.data` only read what it wrote and never import this package. The
names both sides need (``metadata.json``, the format name and version) belong to
:mod:`torchrec_me.data.store`.

Modules, in the order data flows through them:

* :mod:`.common`: :class:`~.common.PrepareOptions`, :class:`~.common.PrepareError`,
  the splits and the log of skipped lines, shared by every converter;
* :mod:`.vocab`: per-field token counts, then token -> id;
* :mod:`.scan`: a delimited text log streamed in blocks, malformed lines skipped (those
  that are not UTF-8 replaced first by :mod:`.utf8`);
* :mod:`.text`: the two-pass conversion of such a log;
* :mod:`.criteo`, :mod:`.avazu`: their text formats; :mod:`.movielens`: an in-memory
  converter;
* :mod:`.destination`: the output checked before any work, replaced only when it is a
  prepared dataset, an interrupted run's leftovers removed;
* :mod:`.output`: the dataset layout, written atomically with ``metadata.json`` last;
* :mod:`.fetch`: MovieLens-100k from the RecBole wheel;
* :mod:`.commands`: ``add_prepare_command`` and ``add_fetch_command`` for the CLI.

Example::

    from torchrec_me.data.prepare.common import PrepareOptions
    from torchrec_me.data.prepare.criteo import prepare_criteo

    meta = prepare_criteo("train.txt", "criteo-prepared", PrepareOptions(split="time"))
"""
