"""One vocabulary for skipped documents (slm_jax/data/skipped.py): prepare's summary counts
each kind, and training's data_skipped_docs is the sum of the kinds it can meet."""

import json

from slm_jax.data import prepare, skipped


def test_prepare_counts_every_kind_of_the_vocabulary(tmp_path):
    lines = ['{"text": "kept"}', '{"text": ""}', "not json", '{"url": 1}', '{"text": 5}']
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "\xff"}\n')
    counts = prepare.prepare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                             str(tmp_path / "out"), 1)
    assert {kind: counts[kind] for kind in skipped.KINDS} == {kind: 1 for kind in skipped.KINDS}
    manifest = json.loads((tmp_path / "out" / "openwebmath-manifest.json").read_text())
    assert set(manifest["first_bad"]) == set(skipped.KINDS)
    assert set(skipped.TRAINING_KINDS) <= set(skipped.KINDS)
