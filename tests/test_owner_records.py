"""The compare-and-swap record a lease stands on (slm_jax/parallel/owner_records.py)."""

from slm_jax.parallel import owner_records


def test_record_store_compare_and_swap(tmp_path):
    store = owner_records.LocalRecordStore(str(tmp_path), "record")
    assert store.read() is None
    first = store.create(b"a")
    assert first is not None and store.create(b"b") is None
    second = store.replace(b"c", first)
    assert second is not None and store.replace(b"d", first) is None
    assert store.read() == (b"c", second)
