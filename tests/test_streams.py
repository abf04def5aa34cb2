"""The stream layout (slm_jax/data/streams.py): global batches independent of hosts, state that moves between host counts."""


import numpy as np
import pytest

from slm_jax.data import BATCH_KEYS, pipeline, streams
from tests.test_iterator import SAVES, STEPS, _assert_same, _config, _take, data, mesh, saved_run  # noqa: F401  (shared fixtures and helpers)


# --------------------------------------------------------------------------
# Resuming.


# --------------------------------------------------------------------------
# Independence from the number of hosts.


def _joined(parts):
    return [{k: np.concatenate([p[i][k] for p in parts]) for k in BATCH_KEYS}
            for i in range(len(parts[0]))]


def test_global_batch_does_not_depend_on_the_hosts(data):
    """K=4: one host == two hosts side by side, and two hosts' state resumes on four."""
    config = _config(data, num_streams=4)
    one = _take(pipeline.host_streams(config), 19)
    two_hosts = [pipeline.host_streams(config, h, 2) for h in range(2)]
    _assert_same(_joined([_take(host, 13) for host in two_hosts]), one[:13])
    merged = {**two_hosts[0].state(), "positions": {
        k: v for host in two_hosts for k, v in host.state()["positions"].items()}}
    four_hosts = [pipeline.host_streams(config, h, 4) for h in range(4)]
    for host in four_hosts:
        host.restore_state(merged, "the two-host state")
    _assert_same(_joined([_take(host, 6) for host in four_hosts]), one[13:])


def test_streams_fill_their_own_rows(data, saved_run):
    # Rows [k*B/K, (k+1)*B/K) of every batch are stream k's.
    uninterrupted, _ = saved_run
    first_stream = _take(pipeline.stream_set(_config(data), [0]), 3)
    for a, b in zip(first_stream, uninterrupted):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(a[key], b[key][:4])


# --------------------------------------------------------------------------
# Errors name the binding to fix.


def test_num_streams_must_divide_the_batch(data):
    with pytest.raises(ValueError, match=r"num_streams=3 must divide DataConfig.global_batch_size=8"):
        _config(data, num_streams=3)


def test_num_streams_must_be_a_multiple_of_the_hosts(data):
    hosts = r"DataConfig.num_streams=2 is not a multiple of the number of hosts \(4\).*\[4, 8\]"
    with pytest.raises(ValueError, match=hosts):
        pipeline.host_streams(_config(data), 0, 4)
    with pytest.raises(ValueError, match="DataConfig.num_streams"):
        streams.layout(2, 8, 3)
