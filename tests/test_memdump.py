"""The env-gated tracemalloc snapshot dumper (dilithion/node/memdump.py): off by
default, on with DIL_TRACEMALLOC_DUMP_S, snapshots loadable by tracemalloc."""
from __future__ import annotations

import os
import tracemalloc

import pytest

from dilithion.node.memdump import ENV_VAR, SnapshotDumper
from framework import wait_until


@pytest.fixture
def restore_tracing():
    was = tracemalloc.is_tracing()
    yield
    if not was and tracemalloc.is_tracing():
        tracemalloc.stop()


@pytest.mark.parametrize("value", [None, "", "0", "-5", "soon", "nan"])
def test_off_unless_a_positive_number_of_seconds(tmp_path, restore_tracing, value):
    was = tracemalloc.is_tracing()
    environ = {} if value is None else {ENV_VAR: value}
    assert SnapshotDumper.from_env(tmp_path, environ) is None
    assert tracemalloc.is_tracing() == was
    assert not (tmp_path / "tracemalloc").exists()


def test_dumps_loadable_snapshots_at_the_interval(tmp_path, restore_tracing):
    now = [100.0]
    dumper = SnapshotDumper.from_env(tmp_path, {ENV_VAR: "30"})
    assert dumper is not None and tracemalloc.is_tracing()
    dumper._clock = lambda: now[0]
    dumper._next = now[0]
    first = dumper.maybe_dump()
    assert first == tmp_path / "tracemalloc" / "snap-0000.bin"
    now[0] += 29
    assert dumper.maybe_dump() is None
    now[0] += 1
    second = dumper.maybe_dump()
    assert second.name == "snap-0001.bin"
    snap = tracemalloc.Snapshot.load(str(second))
    assert snap.traces and len(snap.statistics("lineno")) > 0


def test_a_write_error_stops_the_dumps_not_the_caller(tmp_path, restore_tracing):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    dumper = SnapshotDumper.from_env(blocker, {ENV_VAR: "1"})
    assert dumper.maybe_dump() is None and dumper.written == []
    dumper._next = 0
    assert dumper.maybe_dump() is None


def test_a_node_process_writes_snapshots_when_asked(process_node):
    on = process_node("on", ["--connect=none"], env={**os.environ, ENV_VAR: "1"})
    on.start(timeout=180)          # RandomX start-up on a loaded two-core machine
    snaps = on.datadir / "tracemalloc"
    wait_until(lambda: len(list(snaps.glob("snap-*.bin"))) >= 2, 60,
               message=on.describe)
    assert tracemalloc.Snapshot.load(str(snaps / "snap-0000.bin")).traces
