"""One owner per run directory: flock locally, a lease over a compare-and-swap record store."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slm_jax.parallel import owner_records, ownership
from slm_jax.parallel.ownership import OwnershipConfig, OwnershipLostError, RunOwnedError

_HOLDER = """
import sys, time
from slm_jax.parallel import owner_records, ownership
config = ownership.OwnershipConfig(backend=sys.argv[2], heartbeat_s=0.2, stale_after_s=60)
with ownership.own(sys.argv[1], binding="train.run_dir", config=config):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Starts a process owning a directory; yields (its Popen, the directory)."""
    procs = []

    def start(path, backend="flock"):
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), backend],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_owner_is_refused_with_the_owner_named(tmp_path, holder):
    proc = holder(tmp_path / "run")
    with pytest.raises(RunOwnedError) as err:
        with ownership.own(str(tmp_path / "run"), binding="train.run_dir"):
            pytest.fail("took a directory another process owns")
    message = str(err.value)
    assert f"pid {proc.pid}" in message and "host " in message and "last heartbeat" in message
    assert "set train.run_dir to another directory" in message


def test_a_killed_owner_leaves_no_stale_lock(tmp_path, holder):
    proc = holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ownership.own(str(tmp_path / "run"), binding="train.run_dir"):
        record = json.loads((tmp_path / "run" / ownership.OWNER_FILE).read_text())
        assert record["pid"] == os.getpid()


def test_a_directory_inside_a_running_jobs_directory_is_refused(tmp_path, holder):
    proc = holder(tmp_path / "experiment")
    with pytest.raises(RunOwnedError, match=f"pid {proc.pid}"):
        with ownership.own(str(tmp_path / "experiment" / "clm"), binding="train.run_dir"):
            pass


def test_nested_directories_of_the_owner_are_free_and_released_after(tmp_path):
    with ownership.own(str(tmp_path / "work"), binding="experiment.work_dir"):
        with ownership.own(str(tmp_path / "work" / "slm"), binding="train.run_dir"):
            pass
    with ownership.own(str(tmp_path / "work" / "slm"), binding="train.run_dir"):
        pass   # released: another owner may take it


def test_lease_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, holder):
    proc = holder(tmp_path / "run", backend="lease")
    config = OwnershipConfig(backend="lease", heartbeat_s=0.2, stale_after_s=5)
    with pytest.raises(RunOwnedError, match=f"pid {proc.pid}"):
        with ownership.own(str(tmp_path / "run"), binding="score.out_dir", config=config):
            pass
    proc.send_signal(signal.SIGKILL)   # its heartbeats stop; the record stays
    proc.wait()
    stale = OwnershipConfig(backend="lease", heartbeat_s=0.1, stale_after_s=0.5)
    time.sleep(0.6)
    with ownership.own(str(tmp_path / "run"), binding="score.out_dir", config=stale):
        body, _ = owner_records.LocalRecordStore(str(tmp_path / "run"), ownership.OWNER_FILE).read()
        assert json.loads(body)["pid"] == os.getpid()


def test_a_displaced_lease_owner_stops_writing(tmp_path):
    config = OwnershipConfig(backend="lease", heartbeat_s=0.05, stale_after_s=10)
    path = str(tmp_path / "run")
    with ownership.own(path, binding="train.run_dir", config=config):
        store = owner_records.LocalRecordStore(path, ownership.OWNER_FILE)
        body, generation = store.read()
        intruder = json.dumps({"host": "other", "pid": 1, "heartbeat": time.time()}).encode()
        assert store.replace(intruder, generation) is not None   # a takeover behind its back
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                ownership.check(os.path.join(path, "checkpoints"))
            except OwnershipLostError as e:
                assert "taken over by host other pid 1" in str(e)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the heartbeat never noticed the takeover")
    assert json.loads(store.read()[0])["host"] == "other"   # release did not overwrite it


def test_a_released_lease_is_free_at_once(tmp_path):
    config = OwnershipConfig(backend="lease", heartbeat_s=1, stale_after_s=600)
    path = str(tmp_path / "run")
    with ownership.own(path, binding="train.run_dir", config=config):
        pass
    with ownership.own(path, binding="train.run_dir", config=config):
        pass


def test_config_is_checked():
    with pytest.raises(ValueError, match="OwnershipConfig.stale_after_s"):
        OwnershipConfig(heartbeat_s=10, stale_after_s=5)
    with pytest.raises(ValueError, match="OwnershipConfig.backend"):
        OwnershipConfig(backend="nfs")


def test_a_job_that_fails_before_writing_leaves_its_directory_as_it_was(tmp_path):
    with pytest.raises(ValueError):
        with ownership.own(str(tmp_path / "new"), binding="experiment.work_dir"):
            raise ValueError("bad input")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError):
        with ownership.own(str(tmp_path / "old"), binding="experiment.work_dir"):
            raise ValueError("bad input")
    assert list((tmp_path / "old").iterdir()) == []
    with ownership.own(str(tmp_path / "old"), binding="experiment.work_dir"):
        (tmp_path / "old" / "results.md").write_text("x")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [".owner", "results.md"]
