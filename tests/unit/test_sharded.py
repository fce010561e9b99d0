"""Row-wise sharded tables on two gloo ranks against one process holding the whole model.

The ranks are real processes joined as torchrun's workers are (tests/ranks.py). With windows of one
mini-batch each, the union of the ranks' shares is the whole window, so two ranks must compute what
one process computes on all of it: the prequential loss (and the AUC, up to its histogram), the
training loss, every weight and every optimiser state (for Adagrad, SparseAdam and row-wise Adagrad,
with gradient clipping, real-time inputs and a drift's forgetting) and the real-time features, which
every rank keeps whole; and the snapshots rank 0 joins from the ranks' parts must be those the single
process cuts, full and delta alike, the features included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream_learner.learning.models import FieldSpec, ModelSpec
from stream_learner.learning.realtime import EVENTS, LABELLED
from stream_learner.learning.sharded import Sharding, row_table
from stream_learner.learning.sharded_trainer import step_shares
from stream_learner.snapshots import delta
from stream_learner.snapshots.shards import PART, ROWS, SHARD, WHOLE, assemble, decode_part, encode_part
from tests.ranks import run_ranks


def test_two_ranks_train_and_snapshot_what_one_process_does(tmp_path: Path) -> None:
    ranks = run_ranks("equivalence", 2, tmp_path)
    for found in ranks:
        assert found["loss"] < 1e-6
        # The AUC comes from a histogram of 16384 logit bins: near-ties of a new model's first window
        # (every id unseen: the same inputs) fall into one bin, which counts them as ties.
        assert found["auc"] < 1e-2
        assert found["train_loss"] < 1e-6
        assert found["state"] < 1e-5
        assert found["counts"] == 0.0  # every rank folds every rank's events, as one process does
    copies = ranks[0]["copies"]
    full, delta_ = ["FULL", "FULL", True], ["DELTA", "DELTA", True]
    # adagrad: a due full copy alone; adam and rowwise adagrad: cut as a delta, then whole (delta_first)
    assert [c[:3] for c in copies] == [full, delta_, full] + [full, delta_, delta_, full] * 2
    assert max(c[3] for c in copies) < 1e-5


def test_a_rank_without_events_joins_every_step_and_owners_reset_rows_for_others(tmp_path: Path) -> None:
    zero, one = run_ranks("uneven", 2, tmp_path)
    assert zero["count"] == one["count"] == 100
    assert zero["steps"] == one["steps"] == 7  # ceil(100 / 16) steps, rank 1 with empty shares
    assert zero["loss"] == one["loss"] and np.isfinite(zero["loss"])
    assert zero["dense"] == one["dense"]  # the same dense weights after every step
    assert one["reset_linear"] == 0.0 and one["reset_state"] == 0.0
    assert one["trained_rows"] > 5  # rank 1's shard was trained by rank 0's events
    assert zero["counts"] == one["counts"]  # both ranks count rank 0's events, and forget its row 35
    user = np.array(one["counts"]["features.user.sums"])
    assert user[35, EVENTS] == 0 and user[:, EVENTS].sum() == 2 - 1 + 100  # row 35's earlier event: forgotten
    labelled = user[:, LABELLED]  # labels of events older than 2000 - 150 ms
    assert labelled[35] == 0 and labelled.sum() == 1 + one["matured"] and 0 < one["matured"] < 100
    assert np.array(one["counts"]["features.item.sums"])[:, EVENTS].sum() == 2 + 100


def test_rows_of_a_table_are_spread_over_the_ranks() -> None:
    for total in (0, 1, 37, 1 << 10):
        for world in (1, 2, 3, 5):
            counts = [Sharding(r, world).rows_of(total) for r in range(world)]
            assert sum(counts) == total and max(counts) - min(counts) <= 1
    rank1 = Sharding(1, 3)
    table = torch.arange(10).unsqueeze(1)
    assert rank1.shard(table).squeeze(1).tolist() == [1, 4, 7]
    assert rank1.to_global(torch.tensor([0, 1, 2])).tolist() == [1, 4, 7]
    spec = ModelSpec("fm", (FieldSpec("user", 10), FieldSpec("item", 5)))
    assert [f.rows for f in rank1.spec(spec).fields] == [3, 2]


def test_row_aligned_tensors_are_told_by_name_and_rows() -> None:
    rows = {"embeddings.user": 10, "linear.weights.user": 10}
    assert row_table("model.embeddings.user.weight", (10, 4), rows) == "embeddings.user"
    assert row_table("optim.sparse.linear.weights.user.weight.sum", (10, 1), rows) == "linear.weights.user"
    assert row_table("optim.sparse.embeddings.user.weight.step", (), rows) is None
    assert row_table("model.mlp.0.weight", (10, 4), rows) is None
    assert row_table("optim.dense.bias.exp_avg", (1,), rows) is None


@pytest.mark.parametrize("sizes", [[1, 1], [0, 100], [100, 0], [33, 67, 5], [7, 7, 7]])
@pytest.mark.parametrize("batch", [1, 4, 16, 1000])
def test_every_step_gets_its_share_of_the_global_batch(sizes: list[int], batch: int) -> None:
    n = sum(sizes)
    steps = -(-n // batch)
    shares = step_shares(np.array(sizes), steps)
    assert shares.sum(axis=1).tolist() == sizes
    per_step = shares.sum(axis=0)
    assert per_step.min() >= 1 and per_step.max() - per_step.min() <= 1
    assert (shares.max(axis=1) - shares.min(axis=1) <= 1).all()


def test_parts_join_into_the_layout_of_one_process() -> None:
    weight = torch.arange(10.0).reshape(5, 2)  # rows 0, 2, 4 on rank 0; 1, 3 on rank 1
    bias = torch.tensor([7.0])
    parts = [
        {WHOLE + "model.bias": bias, SHARD + "model.embeddings.user.weight": weight[0::2]},
        {SHARD + "model.embeddings.user.weight": weight[1::2]},
    ]
    full = assemble("FULL", [decode_part(encode_part(p, {"x": 1}))[0] for p in parts])
    assert full.keys() == {"model.bias", "model.embeddings.user.weight"}
    assert np.array_equal(full["model.embeddings.user.weight"], weight.numpy())
    changed = [
        {
            WHOLE + "model.bias": bias,
            ROWS + "user": torch.tensor([4, 0]),
            f"{PART}user/w": torch.tensor([[4.0], [0.0]]),
        },
        {ROWS + "user": torch.tensor([3]), f"{PART}user/w": torch.tensor([[3.0]])},
    ]
    d = assemble("DELTA", changed)
    assert d[delta.ROWS + "user"].tolist() == [0, 3, 4]
    assert d[delta.SLICE + "user/w"].squeeze(1).tolist() == [0.0, 3.0, 4.0]
    assert np.array_equal(d["model.bias"], bias.numpy())


def test_a_part_carries_its_header_and_tensors_without_pickle() -> None:
    data = encode_part({"a": torch.ones(3)}, {"frontier": {"0": 5}, "letters": []})
    tensors, info = decode_part(data)
    assert info == {"frontier": {"0": 5}, "letters": []}
    assert torch.equal(tensors["a"], torch.ones(3))
    assert b"pickle" not in data and data[8:9] == b"{"
