"""Sequence data for the generative recommenders: raw logs -> user sequences -> SequenceBatch.

The converter half (run once, before training; it imports the CTR converter's options,
skip log and atomic output from :mod:`torchrec_me.data.prepare`):

* :mod:`.delimited`: a delimited log -> validated Arrow columns, every bad line counted;
* :mod:`.formats`: the five raw formats -> interactions;
* :mod:`.filters`: rating threshold and iterative k-core;
* :mod:`.splits`: leave-one-out and temporal split positions (shared with the readers);
* :mod:`.prepare`: ``prepare_sequences``, writing the layout of :mod:`.layout` atomically;
* :mod:`.fetch`: MovieLens-1M/20M and Amazon Books from their hosts, resumable, checked;
* :mod:`.commands`: ``prepare sequences`` and the ``fetch`` names for the CLI.

The reader half (never imports the converter):

* :mod:`.layout`: file names, schemas, metadata loading, the vocabulary fingerprint;
* :mod:`.reader`: :class:`~.reader.SequenceReader`, the training windows, the global training stream (each rank a slice of it) and
  evaluation batches both readers share;
* :mod:`.dataset`: :class:`~.dataset.SequenceDataset`, a prepared directory;
* :mod:`.synthetic`: :class:`~.synthetic.SyntheticSequences`, the generated default with an
  exact oracle HR@k.

Example::

    from torchrec_me.data.sequences.synthetic import SyntheticSequences

    ds = SyntheticSequences()
    batch = next(ds.train_batches(rank=0, world_size=1, batch_size=64, max_seq_len=50))
"""
