"""Deterministic, seekable data order: K data streams make up every global batch.

The global batch at step ``s`` is ``K`` slices of ``B/K`` packed rows: slice
``k`` (rows ``[k*B/K, (k+1)*B/K)``) is batch ``s`` of stream ``k``, and
stream ``k`` reads shard ``k`` of ``K`` of the documents in an order fixed by
the seed. Nothing here depends on the number of hosts: a host builds only the
streams whose rows its devices hold, so any host count that divides ``K``
yields the same global batches.

Seeking without tf.data checkpoints. seqio packs chunks in independent blocks
of a fixed number of chunks (``row_len``); no row spans two blocks. A stream
can therefore restart at the start of its current block from a cursor into
its documents -- skip ``D`` documents before tokenising them (cheap: only
reading), skip ``C`` chunks of the next one, pack, and drop the rows of the
block it had already returned. :class:`StreamPosition` follows that cursor
from the rows it sees, so a saved stream is a few integers (saved inside the
train checkpoint, see ``StreamSet.state``), and restoring it costs a read of the skipped documents plus one block.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Optional

import numpy as np

TOKENS, SEGMENTS = "targets", "targets_segment_ids"  # packed-row keys the position follows

Rows = dict[str, np.ndarray]
# (stream index, position) -> iterator of that stream's batches of packed rows from there on.
OpenRows = Callable[[int, "StreamPosition"], Iterator[Rows]]


# --------------------------------------------------------------------------
# Which rows belong to which stream, and which streams to which host.


@dataclasses.dataclass(frozen=True)
class Layout:
    """How ``global_batch_size`` rows split into ``num_streams`` equal slices."""

    num_streams: int
    global_batch_size: int

    @property
    def rows_per_stream(self) -> int:
        return self.global_batch_size // self.num_streams

    def stream_rows(self, stream: int) -> range:
        """Global rows of stream ``stream`` in every batch."""
        return range(stream * self.rows_per_stream, (stream + 1) * self.rows_per_stream)

    def host_streams(self, host_index: int, num_hosts: int) -> range:
        """Streams of host ``host_index`` of ``num_hosts``: its contiguous rows of each batch."""
        per_host = self.num_streams // num_hosts
        return range(host_index * per_host, (host_index + 1) * per_host)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layout(num_streams: int, global_batch_size: int, num_hosts: int = 1) -> Layout:
    """The stream layout; ValueError naming the gin binding when it cannot work."""
    if num_streams < 1 or global_batch_size % num_streams:
        raise ValueError(
            f"DataConfig.num_streams={num_streams} must divide DataConfig.global_batch_size="
            f"{global_batch_size} (every stream gives the same number of rows to a batch); "
            f"choose one of {_divisors(global_batch_size)}.")
    if num_hosts < 1 or num_streams % num_hosts:
        fits = [d for d in _divisors(global_batch_size) if d % max(num_hosts, 1) == 0]
        raise ValueError(
            f"DataConfig.num_streams={num_streams} is not a multiple of the number of hosts "
            f"({num_hosts}); each host builds whole streams. Set DataConfig.num_streams to "
            f"one of {fits or 'nothing: global_batch_size is not divisible by the hosts'} "
            "(the data order depends on num_streams, not on the hosts, so keep it for the run).")
    return Layout(num_streams, global_batch_size)


# --------------------------------------------------------------------------
# Position of one stream.


class BlockAssumptionError(RuntimeError):
    """A packed row spanned two packing blocks, so block restarts would not be exact."""


@dataclasses.dataclass
class StreamPosition:
    """Where a stream stands, in terms its pipeline can seek to.

    The current packing block starts at chunk ``block_chunk`` of document
    ``block_doc`` (0-based, counted from the start of the stream, epochs
    included); ``rows_in_block`` of its rows, holding ``chunks_in_block``
    chunks, were returned. ``doc``/``chunk`` is the same cursor after the last
    returned row, and ``rows`` counts all rows returned.
    """

    block_doc: int = 0
    block_chunk: int = 0
    rows_in_block: int = 0
    chunks_in_block: int = 0
    doc: int = 0
    chunk: int = 0
    rows: int = 0

    def advance(self, segment_ids: np.ndarray, tokens: np.ndarray, *, eos_id: int,
                block_chunks: int) -> None:
        """Accounts for returned packed rows ``[b, row_len]`` in order.

        Every segment is one chunk; a chunk whose last token is EOS ends its
        document (EOS occurs nowhere else). All-padding rows (the tail of a
        finite stream) hold no chunks.
        """
        for seg, tok in zip(segment_ids, tokens):
            self.rows += 1
            is_token = seg > 0
            if not is_token.any():
                continue
            last_of_segment = np.flatnonzero(is_token & np.append(seg[1:] != seg[:-1], True))
            n = len(last_of_segment)
            if self.chunks_in_block == block_chunks:  # the previous block is complete
                self.block_doc, self.block_chunk = self.doc, self.chunk
                self.rows_in_block = self.chunks_in_block = 0
            if self.chunks_in_block + n > block_chunks:
                raise BlockAssumptionError(
                    f"a packed row spans two packing blocks of {block_chunks} chunks; seqio's "
                    "packer changed, so streams cannot be resumed exactly (see streams.py).")
            self.rows_in_block += 1
            self.chunks_in_block += n
            doc_ends = np.flatnonzero(tok[last_of_segment] == eos_id)
            if doc_ends.size:
                self.doc += doc_ends.size
                self.chunk = n - 1 - int(doc_ends[-1])
            else:
                self.chunk += n


class Stream:
    """One stream's batches of packed rows and its position; opened lazily."""

    def __init__(self, index: int, open_rows: OpenRows, *, eos_id: int, block_chunks: int,
                 position: Optional[StreamPosition] = None):
        self.index = index
        self.position = position or StreamPosition()
        self._open_rows, self._eos_id, self._block_chunks = open_rows, eos_id, block_chunks
        self._rows: Optional[Iterator[Rows]] = None

    def next(self) -> Optional[Rows]:
        """The next batch of rows, or None once a finite stream is exhausted."""
        if self._rows is None:
            self._rows = self._open_rows(self.index, dataclasses.replace(self.position))
        batch = next(self._rows, None)
        if batch is not None:
            self.position.advance(batch[SEGMENTS], batch[TOKENS], eos_id=self._eos_id,
                                  block_chunks=self._block_chunks)
        return batch


def _pad_rows(rows: Rows, num_rows: int) -> Rows:
    missing = num_rows - len(next(iter(rows.values())))
    if not missing:
        return rows
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in rows.items()}


class StreamSet:
    """The streams one host builds; each ``next()`` is their rows of the next global batch.

    Rows come in stream order (``stream_ids`` ascending), ``rows_per_stream``
    per stream; a finished finite stream contributes all-padding rows, and the
    iteration ends when every stream has finished. ``finish`` turns the
    concatenated packed rows into what callers get (e.g. the LM view).
    """

    def __init__(self, open_rows: OpenRows, stream_ids: Sequence[int], stream_layout: Layout, *,
                 eos_id: int, block_chunks: int, fingerprint: Mapping,
                 finish: Callable[[Rows], Rows] = lambda rows: rows):
        if list(stream_ids) != sorted(set(stream_ids)) or not stream_ids:
            raise ValueError(f"stream_ids {list(stream_ids)} must be distinct, ascending and non-empty.")
        if stream_ids[-1] >= stream_layout.num_streams:
            raise ValueError(f"stream {stream_ids[-1]} is outside [0, {stream_layout.num_streams}).")
        self.layout, self.stream_ids = stream_layout, list(stream_ids)
        self.fingerprint = dict(fingerprint)
        self.step = 0  # global batches returned so far
        self._open_rows, self._eos_id, self._block_chunks = open_rows, eos_id, block_chunks
        self._finish = finish
        self._streams = self._open({})

    def _open(self, positions: Mapping[int, StreamPosition]) -> list[Stream]:
        return [Stream(k, self._open_rows, eos_id=self._eos_id, block_chunks=self._block_chunks,
                       position=positions.get(k)) for k in self.stream_ids]

    def __iter__(self) -> "StreamSet":
        return self

    def __next__(self) -> Rows:
        parts = [s.next() for s in self._streams]
        template = next((p for p in parts if p is not None), None)
        if template is None:
            raise StopIteration
        rows = self.layout.rows_per_stream
        empty = {k: v[:0] for k, v in template.items()}
        parts = [_pad_rows(empty if p is None else p, rows) for p in parts]
        self.step += 1
        return self._finish({k: np.concatenate([p[k] for p in parts]) for k in template})

    def positions(self) -> dict[int, StreamPosition]:
        return {s.index: dataclasses.replace(s.position) for s in self._streams}

    # -- state / restore / replay -----------------------------------------

    def state(self, stream_ids: Optional[Sequence[int]] = None) -> dict:
        """The data order after ``step`` batches as a small JSON-able record: the
        positions of ``stream_ids`` (default: all of this set's) and what they are valid for.
        The trainer saves it as an item of the same orbax checkpoint as the model."""
        positions = self.positions()
        ids = self.stream_ids if stream_ids is None else list(stream_ids)
        return {"step": self.step, "num_streams": self.layout.num_streams,
                "fingerprint": self.fingerprint,
                "positions": {str(k): dataclasses.asdict(positions[k]) for k in ids}}

    def restore_state(self, record: Mapping, where: str) -> None:
        """Continues from a ``state()`` record holding (at least) this set's streams.

        ``where`` names the record's origin (a checkpoint) in error messages.
        """
        self._check_record(record, where)
        missing = [k for k in self.stream_ids if str(k) not in record["positions"]]
        if missing:
            raise ValueError(f"{where} holds no data position for streams {missing[:3]}; it "
                             "was saved by another data layout.")
        positions = {k: StreamPosition(**record["positions"][str(k)]) for k in self.stream_ids}
        self._streams, self.step = self._open(positions), int(record["step"])

    def _check_record(self, record: Mapping, where: str) -> None:
        saved = record.get("fingerprint", {})
        changed = sorted(k for k in set(saved) | set(self.fingerprint)
                         if saved.get(k) != self.fingerprint.get(k))
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed)
            raise ValueError(
                f"the data order saved in {where} was made with other data settings ({detail}); "
                "restore the DataConfig of that run, or start a new run_dir.")
        expected = int(record["step"]) * self.layout.rows_per_stream
        wrong = [k for k, p in record["positions"].items() if p["rows"] != expected]
        if wrong:
            raise ValueError(f"{where} records {record['positions'][wrong[0]]['rows']} rows for "
                             f"stream {wrong[0]}, but step {record['step']} needs {expected}; "
                             "the data state does not belong to this run.")

    def skip_to(self, step: int) -> None:
        """Replays the streams up to ``step`` (reads and packs every skipped row)."""
        if step < self.step:
            self._streams, self.step = self._open({}), 0
        logging.info("replaying the data order from batch %d to %d", self.step, step)
        while self.step < step:
            parts = [s.next() for s in self._streams]  # every stream advances
            if all(p is None for p in parts):
                raise ValueError(f"the data ends after {self.step} batches; cannot skip to {step}.")
            self.step += 1


__all__ = ["BlockAssumptionError", "Layout", "Stream", "StreamPosition", "StreamSet", "layout"]
