"""``prepare``: a text release (parquet or jsonl) -> N TFRecord shards of ``tf.train.Example{text}``.

    python -m slm_jax.data.prepare --input 'open-web-math/data/*.parquet' \\
        --output_dir gs://BUCKET/owm --num_shards 1024 [--text_key text] [--num_streams 64]

Writes ``OUTPUT_DIR/openwebmath-00000-of-01024.tfrecord`` ... (``--name``
changes the prefix). Documents go round-robin to the shards in input order
(files sorted by name, rows in file order), so the same input always gives
the same shards. Empty, non-UTF-8 and unparsable documents are skipped and
counted; the counts are printed as one JSON line. Parquet is read a batch of
rows at a time and only the text column, so memory stays flat. Every path
may be ``gs://`` (tf.io.gfile).

``--num_hosts`` / ``--num_streams`` (``DataConfig.num_streams``): the shard
count must be a multiple of them, so that every data stream -- and so every
host -- reads whole files of equal size; without ``--num_shards`` the
smallest such multiple giving shards of about 256 MB of input is used.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

TEXT_FEATURE = "text"  # what tasks.register_text_task reads
TARGET_SHARD_BYTES = 256 << 20  # of input, when the shard count is picked
_PARQUET_BATCH_ROWS = 1024
_PROGRESS_EVERY = 100_000


class PrepareError(ValueError):
    """A bad argument or input; the message says what to change."""


# --------------------------------------------------------------------------
# Reading: raw document texts, None where a row has none or cannot be parsed.

_UNPARSABLE, _NOT_UTF8 = object(), object()  # markers for rows the readers reject themselves


class _SeekableGFile(io.RawIOBase):
    """A GFile as the file object pyarrow wants (GFile lacks ``closed``/``readinto``)."""

    def __init__(self, path: str):
        super().__init__()
        self._file = tf.io.gfile.GFile(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._file.seek(offset, whence)
        return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


def _parquet_texts(path: str, text_key: str) -> Iterator[Optional[bytes]]:
    import pyarrow as pa  # deferred: only the prepare step needs pyarrow
    import pyarrow.parquet as pq

    with _SeekableGFile(path) as f:
        parquet = pq.ParquetFile(f)
        if text_key not in parquet.schema_arrow.names:
            raise PrepareError(f"{path} has no column {text_key!r} (columns: "
                               f"{parquet.schema_arrow.names}); pass --text_key.")
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_key]):
            column = batch.column(0)
            # As bytes, so invalid UTF-8 is counted here instead of failing the batch.
            if pa.types.is_large_string(column.type):
                column = column.view(pa.large_binary())
            elif pa.types.is_string(column.type):
                column = column.view(pa.binary())
            yield from column.to_pylist()


def _jsonl_texts(path: str, text_key: str) -> Iterator[Optional[bytes]]:
    with tf.io.gfile.GFile(path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        for line in lines:
            if not line.strip():
                continue
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                yield _NOT_UTF8
                continue
            try:
                text = json.loads(line).get(text_key)
            except (ValueError, AttributeError):  # not JSON, or not an object
                yield _UNPARSABLE
                continue
            try:
                yield text.encode("utf-8") if isinstance(text, str) else text
            except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
                yield _NOT_UTF8


def read_texts(path: str, text_key: str = "text") -> Iterator:
    """Raw texts of one parquet or jsonl(.gz) file, in order."""
    if path.endswith(".parquet"):
        return _parquet_texts(path, text_key)
    if path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return _jsonl_texts(path, text_key)
    raise PrepareError(f"{path}: not .parquet or .jsonl[.gz]; convert it or leave it out of --input.")


def _classify(raw) -> tuple[Optional[bytes], str]:
    """(UTF-8 text to write, or None; and the count it goes to)."""
    if raw is _UNPARSABLE:
        return None, "unparsable"
    if raw is _NOT_UTF8:
        return None, "not_utf8"
    if not raw:
        return None, "empty"
    if not isinstance(raw, bytes):
        return None, "unparsable"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    return (raw, "written") if text.strip() else (None, "empty")


# --------------------------------------------------------------------------
# Writing.


def shard_paths(output_dir: str, num_shards: int, name: str = "openwebmath") -> list[str]:
    return [f"{output_dir.rstrip('/')}/{name}-{i:05d}-of-{num_shards:05d}.tfrecord"
            for i in range(num_shards)]


def _example(text: bytes) -> bytes:
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))
    return tf.train.Example(features=tf.train.Features(feature={TEXT_FEATURE: feature})).SerializeToString()


def pick_num_shards(num_shards: Optional[int], input_bytes: int, num_hosts: int = 1,
                    num_streams: int = 1) -> int:
    """``num_shards`` checked against hosts and streams, or the smallest fitting count."""
    for flag, value in (("--num_hosts", num_hosts), ("--num_streams", num_streams)):
        if value < 1:
            raise PrepareError(f"{flag} must be positive, got {value}.")
    multiple = math.lcm(num_hosts, num_streams)
    if num_shards is None:
        wanted = max(1, math.ceil(input_bytes / TARGET_SHARD_BYTES))
        return multiple * math.ceil(wanted / multiple)
    if num_shards < 1 or num_shards % multiple:
        raise PrepareError(
            f"--num_shards={num_shards} must be a positive multiple of {multiple} (--num_hosts="
            f"{num_hosts}, --num_streams={num_streams}) so every host and data stream reads "
            f"whole files; e.g. --num_shards={multiple * max(1, round(max(num_shards, 1) / multiple))}.")
    return num_shards


def prepare(inputs: Sequence[str], output_dir: str, num_shards: int, *, text_key: str = "text",
            name: str = "openwebmath", overwrite: bool = False, log=None) -> dict:
    """Writes the shards; returns the counts (also per shard)."""
    paths = shard_paths(output_dir, num_shards, name)
    existing = tf.io.gfile.glob(f"{output_dir.rstrip('/')}/{name}-*.tfrecord")
    if existing and not overwrite:
        raise PrepareError(f"{output_dir} already holds {len(existing)} {name}-*.tfrecord files; "
                           "pass --overwrite to replace them or choose another --output_dir.")
    for path in existing:
        tf.io.gfile.remove(path)
    tf.io.gfile.makedirs(output_dir)
    counts = {"files": len(inputs), "documents": 0, "written": 0, "empty": 0, "not_utf8": 0,
              "unparsable": 0}
    per_shard = [0] * num_shards
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for path in inputs:
            for raw in read_texts(path, text_key):
                text, outcome = _classify(raw)
                counts["documents"] += 1
                counts[outcome] += 1
                if text is not None:
                    shard = (counts["written"] - 1) % num_shards
                    writers[shard].write(_example(text))
                    per_shard[shard] += 1
                if log and counts["documents"] % _PROGRESS_EVERY == 0:
                    log(f"{counts['documents']} documents read, {counts['written']} written")
    finally:
        for writer in writers:
            writer.close()
    pattern = f"{output_dir.rstrip('/')}/{name}-*-of-{num_shards:05d}.tfrecord"
    return {**counts, "shards": num_shards, "per_shard": per_shard, "file_pattern": pattern}


def _input_files(pattern: str) -> list[str]:
    files = sorted(f for p in pattern.split(",") for f in tf.io.gfile.glob(p.strip()))
    if not files:
        raise PrepareError(f"--input {pattern!r} matches no files.")
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.data.prepare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="glob(s), comma-separated, of .parquet or .jsonl[.gz]")
    parser.add_argument("--output_dir", required=True, help="local or gs:// directory")
    parser.add_argument("--num_shards", type=int, default=None)
    parser.add_argument("--text_key", default="text", help="column / JSON key of the text")
    parser.add_argument("--num_hosts", type=int, default=1, help="shards must be a multiple of it")
    parser.add_argument("--num_streams", type=int, default=1, help="DataConfig.num_streams; likewise")
    parser.add_argument("--name", default="openwebmath", help="shard file prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing NAME-*.tfrecord")
    args = parser.parse_args(argv)
    try:
        inputs = _input_files(args.input)
        input_bytes = sum(tf.io.gfile.stat(f).length for f in inputs)
        num_shards = pick_num_shards(args.num_shards, input_bytes, args.num_hosts, args.num_streams)
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        log(f"{len(inputs)} input files ({input_bytes / 1e9:.2f} GB) -> {num_shards} shards "
            f"in {args.output_dir}")
        counts = prepare(inputs, args.output_dir, num_shards, text_key=args.text_key, name=args.name,
                         overwrite=args.overwrite, log=log)
    except PrepareError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    sizes = counts.pop("per_shard")
    counts["docs_per_shard"] = [min(sizes), max(sizes)]
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    from slm_jax import console
    console.filter_native_stderr()
    sys.exit(main())
