"""The batch of the sequential models: each user's time-ordered items as one jagged row.

Shape letters: B users in the batch, L_b the length of user b's row, N = sum_b L_b.

* Training batch: each row is a window of the user's training positions, at most
  ``max_seq_len + 1`` items, oldest first. The model reads items ``0..L_b-2`` and predicts
  items ``1..L_b-1`` (next-item prediction at every position). ``targets`` is all -1.
* Evaluation batch: each row is the user's history before the evaluated interaction
  (at most ``max_seq_len`` items, the most recent ones); ``targets[b]`` is the item to
  rank and ``target_timestamps[b]`` its time.

The item KJT travels as an attribute of the batch, so ``TrainPipelineSparseDist`` can
start its input distribution before the forward (as with ``Batch.sparse_features``).
"""

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

ITEM_FEATURE = "item"


@dataclass
class SequenceBatch(Pipelineable):
    """One batch of user sequences.

    Args:
        items (KeyedJaggedTensor): one key, ``item``: B jagged rows of item ids in
            ``[0, num_items)``, oldest first; ``lengths()`` is (B,) with L_b >= 1.
        timestamps (torch.Tensor): (N,) int64 seconds, aligned with ``items.values()``
            (all zeros for data without timestamps).
        ratings (torch.Tensor): (N,) float32 rating/action of each interaction (1.0 for
            implicit data), aligned with ``items.values()``.
        targets (torch.Tensor): (B,) int64 item to rank per user (evaluation), or -1.
        target_timestamps (torch.Tensor): (B,) int64 time of the target (0 when unknown).
        users (torch.Tensor): (B,) int64 user ids.

    Example::

        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["item"], values=torch.tensor([3, 1, 4, 1, 5]), lengths=torch.tensor([2, 3])
        )
        batch = SequenceBatch(kjt, torch.zeros(5, dtype=torch.long), torch.ones(5),
                              torch.full((2,), -1), torch.zeros(2, dtype=torch.long), torch.arange(2))
    """

    items: KeyedJaggedTensor
    timestamps: torch.Tensor
    ratings: torch.Tensor
    targets: torch.Tensor
    target_timestamps: torch.Tensor
    users: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "SequenceBatch":
        return SequenceBatch(
            items=self.items.to(device=device, non_blocking=non_blocking),
            timestamps=self.timestamps.to(device=device, non_blocking=non_blocking),
            ratings=self.ratings.to(device=device, non_blocking=non_blocking),
            targets=self.targets.to(device=device, non_blocking=non_blocking),
            target_timestamps=self.target_timestamps.to(device=device, non_blocking=non_blocking),
            users=self.users.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.items.record_stream(stream)
        for t in (self.timestamps, self.ratings, self.targets, self.target_timestamps, self.users):
            t.record_stream(stream)  # type: ignore[arg-type]

    def pin_memory(self) -> "SequenceBatch":
        return SequenceBatch(
            items=self.items.pin_memory(),
            timestamps=self.timestamps.pin_memory(),
            ratings=self.ratings.pin_memory(),
            targets=self.targets.pin_memory(),
            target_timestamps=self.target_timestamps.pin_memory(),
            users=self.users.pin_memory(),
        )

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) row lengths L_b."""
        return self.items.lengths()
