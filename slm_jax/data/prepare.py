"""``prepare``: a text release (parquet or jsonl) -> N TFRecord shards of ``tf.train.Example{text}``.

    python -m slm_jax.data.prepare --input 'open-web-math/data/*.parquet' \\
        --output_dir gs://BUCKET/owm --num_shards 1024 [--text_key text] [--num_streams 64]

Writes ``OUTPUT_DIR/openwebmath-00000-of-01024.tfrecord`` ... (``--name``
changes the prefix). Documents go round-robin to the shards in input order
(files sorted by name, rows in file order), so the same input always gives
the same shards. Every row is read; rows that are empty, not UTF-8, not JSON, without
the text field or with a non-text one are skipped and counted by kind
(slm_jax/data/skipped.py) with the first file:line of each, printed at the end (counts
as one JSON line on stdout) and kept in ``OUTPUT_DIR/NAME-manifest.json``. ``--strict``
(any bad row) or ``--max_bad_fraction F`` turn them into exit code 2, writing nothing. Parquet is read a batch of
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
if __name__ == "__main__":   # before TensorFlow's import writes its start-up lines to fd 2
    from slm_jax import console
    console.filter_native_stderr()

import tensorflow as tf  # noqa: E402

from slm_jax.data import skipped  # noqa: E402

TEXT_FEATURE = "text"  # what tasks.register_text_task reads
TARGET_SHARD_BYTES = 256 << 20  # of input, when the shard count is picked
_PARQUET_BATCH_ROWS = 1024
_PROGRESS_EVERY = 100_000


class PrepareError(ValueError):
    """A bad argument or input; the message says what to change."""


# --------------------------------------------------------------------------
# Reading: (row number, raw text or a marker) of every row, blank lines included.

class _Bad:
    """A row a reader rejected itself, by kind (skipped.py's vocabulary)."""

    def __init__(self, kind: str):
        self.kind = kind


_NOT_JSON, _NOT_UTF8, _NO_TEXT = (_Bad(skipped.NOT_JSON), _Bad(skipped.NOT_UTF8),
                                  _Bad(skipped.NO_TEXT_FIELD))


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


def _parquet_texts(path: str, text_key: str) -> Iterator[tuple[int, object]]:
    import pyarrow as pa  # deferred: only the prepare step needs pyarrow
    import pyarrow.parquet as pq

    with _SeekableGFile(path) as f:
        parquet = pq.ParquetFile(f)
        if text_key not in parquet.schema_arrow.names:
            raise PrepareError(f"{path} has no column {text_key!r} (columns: "
                               f"{parquet.schema_arrow.names}); pass --text_key.")
        row = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_key]):
            column = batch.column(0)
            # As bytes, so invalid UTF-8 is counted here instead of failing the batch.
            if pa.types.is_large_string(column.type):
                column = column.view(pa.large_binary())
            elif pa.types.is_string(column.type):
                column = column.view(pa.binary())
            for text in column.to_pylist():
                row += 1
                yield row, text


def _jsonl_texts(path: str, text_key: str) -> Iterator[tuple[int, object]]:
    with tf.io.gfile.GFile(path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        for number, line in enumerate(lines, start=1):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                yield number, _NOT_UTF8
                continue
            if not line.strip():
                yield number, None   # a blank line: an empty document
                continue
            try:
                row = json.loads(line)
            except ValueError:
                yield number, _NOT_JSON
                continue
            if not isinstance(row, dict):
                yield number, _NOT_JSON
            elif text_key not in row:
                yield number, _NO_TEXT
            else:
                text = row[text_key]
                try:
                    yield number, text.encode("utf-8") if isinstance(text, str) else text
                except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
                    yield number, _NOT_UTF8


def read_texts(path: str, text_key: str = "text") -> Iterator[tuple[int, object]]:
    """(line or row number from 1, raw text) of one parquet or jsonl(.gz) file, in order."""
    if path.endswith(".parquet"):
        return _parquet_texts(path, text_key)
    if path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return _jsonl_texts(path, text_key)
    raise PrepareError(f"{path}: not .parquet or .jsonl[.gz]; convert it or leave it out of --input.")


def _classify(raw) -> tuple[Optional[bytes], str]:
    """(UTF-8 text to write, or None; and the count it goes to)."""
    if isinstance(raw, _Bad):
        return None, raw.kind
    if raw is None or (isinstance(raw, bytes) and not raw):
        return None, skipped.EMPTY
    if not isinstance(raw, bytes):   # a number, a list: not text
        return None, skipped.NOT_TEXT
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, skipped.NOT_UTF8
    return (raw, "written") if text.strip() else (None, skipped.EMPTY)


class _Tally:
    """Rows by kind, with the first few places of each bad kind (file:line)."""

    FIRST = 5

    def __init__(self, files: int):
        self.counts = {"files": files, "documents": 0, "written": 0,
                       **{kind: 0 for kind in skipped.KINDS}}
        self.first: dict[str, list[str]] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts["documents"] += 1
        self.counts[kind] += 1
        if kind != "written" and len(self.first.setdefault(kind, [])) < self.FIRST:
            self.first[kind].append(where)

    @property
    def bad(self) -> int:
        return sum(self.counts[kind] for kind in skipped.KINDS)

    def describe(self) -> str:
        return "; ".join(f"{self.counts[kind]} {kind} (first at {', '.join(places)})"
                         for kind, places in self.first.items())


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


class TooManyBadRows(PrepareError):
    """More bad rows than --max_bad_fraction allows; nothing was written."""


def prepare(inputs: Sequence[str], output_dir: str, num_shards: int, *, text_key: str = "text",
            name: str = "openwebmath", overwrite: bool = False,
            max_bad_fraction: Optional[float] = None, log=None) -> dict:
    """Writes the shards and NAME-manifest.json; returns the counts (also per shard).

    Shards are written under temporary names and moved into place only when the input
    passed `max_bad_fraction` (the share of rows of any bad kind; None: no limit), so a
    refused input writes nothing and leaves earlier shards as they were.
    """
    paths = shard_paths(output_dir, num_shards, name)
    existing = tf.io.gfile.glob(f"{output_dir.rstrip('/')}/{name}-*.tfrecord")
    if existing and not overwrite:
        raise PrepareError(f"{output_dir} already holds {len(existing)} {name}-*.tfrecord files; "
                           "pass --overwrite to replace them or choose another --output_dir.")
    created = not tf.io.gfile.exists(output_dir)
    tf.io.gfile.makedirs(output_dir)
    tally = _Tally(len(inputs))
    per_shard = [0] * num_shards
    partials = [p + ".partial" for p in paths]
    writers = [tf.io.TFRecordWriter(p) for p in partials]
    try:
        try:
            for path in inputs:
                for number, raw in read_texts(path, text_key):
                    text, kind = _classify(raw)
                    tally.add(kind, f"{path}:{number}")
                    if text is not None:
                        shard = (tally.counts["written"] - 1) % num_shards
                        writers[shard].write(_example(text))
                        per_shard[shard] += 1
                    if log and tally.counts["documents"] % _PROGRESS_EVERY == 0:
                        log(f"{tally.counts['documents']} documents read, "
                            f"{tally.counts['written']} written")
        finally:
            for writer in writers:
                writer.close()
        _check_bad_share(tally, max_bad_fraction)
    except BaseException:
        for partial in partials:
            if tf.io.gfile.exists(partial):
                tf.io.gfile.remove(partial)
        if created and not tf.io.gfile.listdir(output_dir):
            tf.io.gfile.rmtree(output_dir)
        raise
    for path in existing:
        tf.io.gfile.remove(path)
    for partial, path in zip(partials, paths):
        tf.io.gfile.rename(partial, path, overwrite=True)
    pattern = f"{output_dir.rstrip('/')}/{name}-*-of-{num_shards:05d}.tfrecord"
    result = {**tally.counts, "first_bad": tally.first, "shards": num_shards,
              "per_shard": per_shard, "file_pattern": pattern}
    with tf.io.gfile.GFile(f"{output_dir.rstrip('/')}/{name}-manifest.json", "w") as f:
        f.write(json.dumps({"inputs": list(inputs), "text_key": text_key, **result}, indent=1))
    return result


def _check_bad_share(tally: _Tally, max_bad_fraction: Optional[float]) -> None:
    documents = tally.counts["documents"]
    if max_bad_fraction is None or not documents or tally.bad <= max_bad_fraction * documents:
        return
    limit = "--strict" if max_bad_fraction == 0 else f"--max_bad_fraction={max_bad_fraction:g}"
    raise TooManyBadRows(
        f"{tally.bad} of {documents} rows are bad, more than {limit} allows: {tally.describe()}; "
        "fix or remove those rows (or raise --max_bad_fraction); nothing was written.")


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
    parser.add_argument("--strict", action="store_true",
                        help="any bad row (see the summary's kinds) fails, writing nothing")
    parser.add_argument("--max_bad_fraction", type=float, default=None,
                        help="fail, writing nothing, when more than this share of rows is bad "
                             "(e.g. 0.001)")
    args = parser.parse_args(argv)
    max_bad = 0.0 if args.strict else args.max_bad_fraction
    try:
        inputs = _input_files(args.input)
        input_bytes = sum(tf.io.gfile.stat(f).length for f in inputs)
        num_shards = pick_num_shards(args.num_shards, input_bytes, args.num_hosts, args.num_streams)
        log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
        log(f"{len(inputs)} input files ({input_bytes / 1e9:.2f} GB) -> {num_shards} shards "
            f"in {args.output_dir}")
        counts = prepare(inputs, args.output_dir, num_shards, text_key=args.text_key, name=args.name,
                         overwrite=args.overwrite, max_bad_fraction=max_bad, log=log)
    except PrepareError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    first_bad = counts.pop("first_bad")
    for kind, places in first_bad.items():
        log(f"skipped {counts[kind]} {kind} row(s), first at {', '.join(places)}")
    sizes = counts.pop("per_shard")
    counts["docs_per_shard"] = [min(sizes), max(sizes)]
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
