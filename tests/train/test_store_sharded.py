"""Sharded cache entries (``structkd.train.store``): the same rows whatever the shard size, reads
across shard boundaries through memory maps, an interrupted build resuming at its first
unfinished shard, several "machines" (ranks) building disjoint shards of one entry, worker
processes, and ``RaggedWriter``'s checks. The builder here is a tiny deterministic function of the
sentence id, so these tests are about the store, not a model."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from structkd.train.store import (
    PARTIAL_SUFFIX,
    RaggedArray,
    RaggedWriter,
    ShardedArray,
    ShardPlan,
    build_entry,
    build_sharded_entry,
    fingerprint,
    shard_name,
)

ROOT = Path(__file__).resolve().parents[2]
N = 23
INPUTS = {"what": "rows of sentence ids", "n": N}


def n_rows(item: int) -> int:
    """Rows of sentence ``item`` (0 for some: empty sentences' pairs)."""
    return item % 4


def expected_rows(item: int) -> np.ndarray:
    """``[n_rows(item), 2, 3]`` float32 rows that name their sentence and position."""
    rows = np.arange(n_rows(item), dtype=np.float32)[:, None, None]
    values = int(item) * 100.0 + rows + np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    return values.astype(np.float32)


class IdRows:
    """A ``ShardBuilder`` writing ``expected_rows`` in reversed (not id) order, in batches of 3;
    it fails on ``fail_at`` (a shard's first id) and logs each shard it builds to ``log``."""

    def __init__(self, log: Path | None = None, fail_at: int | None = None):
        self.log = log
        self.fail_at = fail_at
        self.calls: list[int] = []

    def __call__(self, directory: Path, start: int, stop: int) -> dict:
        self.calls.append(start)
        if self.log is not None:
            self.log.mkdir(parents=True, exist_ok=True)
            (self.log / f"{start}.{id(self)}").touch()
        items = list(range(stop - start))
        with RaggedWriter(
            directory, "q", [n_rows(start + i) for i in items], (2, 3), "float32"
        ) as w:
            order = items[::-1]
            for first in range(0, len(order), 3):
                batch = order[first : first + 3]
                padded = np.full((len(batch), 4, 2, 3), -5.0, dtype=np.float32)
                for row, local in enumerate(batch):
                    padded[row, : n_rows(start + local)] = expected_rows(start + local)
                w.write(batch, padded)
                if self.fail_at == start and first >= 3:
                    raise RuntimeError(f"failing in shard at {start}")
        return {"rows": sum(n_rows(start + i) for i in items)}


def total_rows(records: list[dict]) -> dict:
    return {"rows": sum(record["rows"] for record in records)}


def check_entry(directory: Path) -> ShardedArray:
    """Every sentence's rows read back, one at a time and gathered across shards."""
    array = ShardedArray.open(directory, "q")
    assert len(array) == N and array.row_shape == (2, 3)
    for item in range(N):
        assert np.array_equal(array[item], expected_rows(item))
    items = np.array([22, 0, 7, 8, 9, 3, 15, 16, 1])
    gathered = array.gather(items, 4, -1.0)
    assert gathered.shape == (len(items), 4, 2, 3)
    for row, item in enumerate(items):
        assert np.array_equal(gathered[row, : n_rows(item)], expected_rows(item))
        assert (gathered[row, n_rows(item) :] == -1.0).all()
    assert np.array_equal(array.rows(items), [n_rows(i) for i in items])
    with pytest.raises(ValueError, match="sentence ids"):
        array.gather(np.array([N]), 4, 0.0)
    return array


def test_sharded_build_equals_one_shard_and_reads_across_boundaries(tmp_path) -> None:
    one, built = build_sharded_entry(
        tmp_path / "one", INPUTS, N, IdRows(), summarize=total_rows, plan=ShardPlan(shard_size=100)
    )
    assert built and one is not None
    many, built = build_sharded_entry(
        tmp_path / "many", INPUTS, N, IdRows(), summarize=total_rows, plan=ShardPlan(shard_size=5)
    )
    assert built and many is not None and many.name == one.name == fingerprint(INPUTS)
    meta = json.loads((many / "meta.json").read_text())
    assert meta["shards"] == {"size": 5, "starts": [0, 5, 10, 15, 20], "n_items": N}
    assert meta["rows"] == sum(n_rows(i) for i in range(N)) and meta["what"] == INPUTS["what"]
    assert sorted(p.name for p in many.iterdir() if p.is_dir()) == [shard_name(k) for k in range(5)]
    assert not (tmp_path / "many" / f"{many.name}{PARTIAL_SUFFIX}").exists()
    single, sharded = check_entry(one), check_entry(many)
    assert (single.n_shards, sharded.n_shards) == (1, 5)
    for item in range(N):
        assert np.array_equal(single[item], sharded[item])
    # reads are memory maps, opened shard by shard on first use
    fresh = ShardedArray.open(many, "q")
    fresh.gather(np.array([6, 7]), 4, 0.0)
    assert fresh.mapped_shards == [1]
    assert isinstance(fresh.shard(1).values, np.memmap)
    assert isinstance(fresh.shard(1).offsets, np.memmap)
    # a second build finds the entry; a pickled reader maps the files anew
    assert build_sharded_entry(tmp_path / "many", INPUTS, N, IdRows(fail_at=0))[1] is False
    again = pickle.loads(pickle.dumps(fresh))
    assert np.array_equal(again[7], expected_rows(7))
    assert len(pickle.dumps(fresh)) < 2000  # not the data


def test_an_interrupted_build_resumes_at_its_first_unfinished_shard(tmp_path) -> None:
    plan = ShardPlan(shard_size=5)
    failing = IdRows(fail_at=10)
    with pytest.raises(RuntimeError, match="failing in shard at 10"):
        build_sharded_entry(tmp_path, INPUTS, N, failing, summarize=total_rows, plan=plan)
    assert failing.calls == [0, 5, 10]
    partial = tmp_path / f"{fingerprint(INPUTS)}{PARTIAL_SUFFIX}"
    kept = sorted(p.name for p in partial.iterdir() if not p.name.endswith(".json"))
    assert kept == ["00000", "00001"]  # the failed shard's scratch directory is gone
    assert not (tmp_path / fingerprint(INPUTS)).exists()
    # a killed build's scratch directory (its lock free) is removed when the shard is built
    (partial / ".00002.999999.building").mkdir()
    with pytest.raises(ValueError, match="shard_size=5"):
        build_sharded_entry(tmp_path, INPUTS, N, IdRows(), plan=ShardPlan(shard_size=6))
    resumed = IdRows()
    directory, built = build_sharded_entry(
        tmp_path, INPUTS, N, resumed, summarize=total_rows, plan=plan
    )
    assert built and resumed.calls == [10, 15, 20]
    assert directory is not None and not partial.exists()
    assert not list(directory.glob(".*.building"))
    check_entry(directory)


def test_two_machines_build_disjoint_shards_then_one_finishes(tmp_path) -> None:
    """Rank 0 of 2 builds shards 0, 2, 4 and leaves (``finish=False``: no index yet); a finalize
    step (``finish=True``) builds what rank 1 never did; in a second entry rank 1 comes last and
    writes the index itself."""
    first = IdRows()
    plan = ShardPlan(shard_size=5, rank=0, world_size=2, finish=False)
    assert build_sharded_entry(tmp_path / "a", INPUTS, N, first, plan=plan) == (None, True)
    assert first.calls == [0, 10, 20]
    finisher = IdRows()
    directory, built = build_sharded_entry(
        tmp_path / "a", INPUTS, N, finisher, plan=ShardPlan(shard_size=5)
    )
    assert built and finisher.calls == [5, 15] and directory is not None
    check_entry(directory)

    builders = [IdRows(), IdRows()]
    results = [
        build_sharded_entry(
            tmp_path / "b",
            INPUTS,
            N,
            builders[rank],
            plan=ShardPlan(shard_size=5, rank=rank, world_size=2, finish=False),
        )
        for rank in (0, 1)
    ]
    assert results[0] == (None, True) and results[1][0] is not None
    assert [b.calls for b in builders] == [[0, 10, 20], [5, 15]]
    check_entry(results[1][0])


def test_concurrent_ranks_and_worker_processes_build_each_shard_once(tmp_path) -> None:
    """Two processes (ranks 0 and 1, ``finish=True``) each with 2 spawned workers build one entry
    at the same time: each shard is built once, both get the complete entry."""
    root, log = tmp_path / "cache", tmp_path / "log"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from structkd.train.store import ShardPlan, build_sharded_entry
        from tests.train.test_store_sharded import INPUTS, N, IdRows, total_rows
        if __name__ == "__main__":
            rank = int(sys.argv[1])
            plan = ShardPlan(shard_size=4, workers=2, rank=rank, world_size=2)
            directory, built = build_sharded_entry(
                {str(root)!r}, INPUTS, N, IdRows(Path({str(log)!r})), summarize=total_rows,
                plan=plan,
            )
            print(directory)
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(rank)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs[0] == outputs[1] == str(root / fingerprint(INPUTS))
    starts = sorted(int(path.name.split(".")[0]) for path in log.iterdir())
    assert starts == list(range(0, N, 4))  # each of the 6 shards built once
    check_entry(Path(outputs[0]))


def test_an_entry_of_build_entry_reads_as_one_shard(tmp_path) -> None:
    def build(scratch: Path) -> dict:
        array = RaggedArray.create(scratch, "q", [n_rows(i) for i in range(N)], (2, 3), "float32")
        padded = np.zeros((N, 4, 2, 3), dtype=np.float32)
        for item in range(N):
            padded[item, : n_rows(item)] = expected_rows(item)
        array.write(np.arange(N), padded)
        array.values.flush()
        return {}

    directory, _ = build_entry(tmp_path, INPUTS, build)
    assert check_entry(directory).n_shards == 1


def test_ragged_writer_checks(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="1 of 3 sentences were never written"):
        with RaggedWriter(tmp_path, "w", [2, 0, 1], (3,), "float32") as writer:
            writer.write([0, 1], np.ones((2, 2, 3)))
    writer = RaggedWriter(tmp_path, "v", [2, 0, 1], (3,), "int32")
    with pytest.raises(ValueError, match="more rows"):
        writer.write([0], np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="sentence ids"):
        writer.write([3], np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        writer.write([0], np.ones((1, 2, 4)))
    writer.write([2, 0, 1], np.arange(18).reshape(3, 2, 3))  # cast to the file's int32
    writer.close()
    array = RaggedArray.open(tmp_path, "v")
    assert array.values.dtype == np.int32
    assert array[0].tolist() == [[6, 7, 8], [9, 10, 11]] and array[2].tolist() == [[0, 1, 2]]
    assert array[1].shape == (0, 3)


def test_shard_plan_checks(monkeypatch) -> None:
    assert ShardPlan(shard_size=10).bounds(25) == [(0, 10), (10, 20), (20, 25)]
    assert ShardPlan().bounds(0) == [(0, 0)]
    with pytest.raises(ValueError, match="rank"):
        ShardPlan(rank=2, world_size=2)
    with pytest.raises(ValueError, match="workers"):
        ShardPlan(workers=0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    plan = ShardPlan.from_environment(shard_size=7)
    assert (plan.rank, plan.world_size, plan.shard_size) == (3, 4, 7)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (ShardPlan.from_environment().rank, ShardPlan.from_environment().world_size) == (0, 1)
