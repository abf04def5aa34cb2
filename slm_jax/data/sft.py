"""A finite supervised fine-tuning set as seekable, epoch-shuffled packed batches.

Pretraining streams an endless corpus; an SFT set is small and seen `num_epochs` times. Here
the conversations (chat.py) are tokenised once; epoch `e` orders them by a permutation that is
a pure function of (seed, e), packs them greedily into rows of `seq_len + 1` tokens with
segment ids (a conversation never spans two rows), and cuts the rows into global batches, the
last one padded with empty rows (weight 0) so every conversation is trained once per epoch.
Step `s` is therefore a pure function of (files, tokenizer, seed, s): a resumed run seeks to
its step, nothing else is saved. Loss weights: the assistant tokens only (chat.ChatTemplate).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Iterator, Sequence

import jax
import numpy as np

from slm_jax.data import chat
from slm_jax.data.pipeline import lm_view

OVER_LONG = "over_long"   # a conversation longer than a row: skipped, counted, placed


@dataclasses.dataclass
class SftSet:
    examples: list[tuple[np.ndarray, np.ndarray]]   # (ids, loss mask) per conversation
    skipped: dict[str, list[str]]                    # kind -> file:line of each


def load(files: Sequence[str], vocabulary, template: chat.ChatTemplate, seq_len: int) -> SftSet:
    """Every conversation of `files`; one longer than `seq_len + 1` tokens is skipped and
    counted (its file:line logged), a malformed row is an error naming it."""
    examples, skipped = [], {OVER_LONG: []}
    for path in files:
        for number, messages in chat.read_conversations(path):
            ids, mask = template.encode(vocabulary, messages)
            if len(ids) > seq_len + 1:
                skipped[OVER_LONG].append(f"{path}:{number} ({len(ids)} tokens)")
                continue
            examples.append((ids, mask))
    if skipped[OVER_LONG]:
        logging.warning("skipped %d conversation(s) longer than DataConfig.seq_len + 1 = %d "
                        "tokens, first at %s", len(skipped[OVER_LONG]), seq_len + 1,
                        ", ".join(skipped[OVER_LONG][:5]))
    if not examples:
        raise ValueError(f"sft.data_files={list(files)!r} holds no conversation that fits "
                         f"DataConfig.seq_len={seq_len}; raise DataConfig.seq_len or check the "
                         "files.")
    return SftSet(examples, skipped)


def pack_epoch(sft_set: SftSet, seq_len: int, seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Epoch `epoch`'s rows [n, seq_len] (lm_view's keys), in its shuffled order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(sft_set.examples))
    row_len = seq_len + 1
    rows, row = [], []
    used = 0
    for index in order:
        ids, _ = sft_set.examples[index]
        if used + len(ids) > row_len:
            rows.append(row)
            row, used = [], 0
        row.append(index)
        used += len(ids)
    rows.append(row)
    tokens = np.zeros((len(rows), row_len), np.int32)
    segments, positions = np.zeros_like(tokens), np.zeros_like(tokens)
    trained = np.zeros(tokens.shape, bool)
    for r, members in enumerate(rows):
        start = 0
        for segment, index in enumerate(members, start=1):
            ids, mask = sft_set.examples[index]
            end = start + len(ids)
            tokens[r, start:end], trained[r, start:end] = ids, mask
            segments[r, start:end], positions[r, start:end] = segment, np.arange(len(ids))
            start = end
    view = lm_view(tokens, segments, positions)
    view["loss_weights"] = view["loss_weights"] * trained[:, 1:]
    return view


class SftBatches:
    """The run's global batches: epochs of packed rows, `global_batch_size` rows a step."""

    def __init__(self, sft_set: SftSet, *, seq_len: int, global_batch_size: int, seed: int,
                 num_epochs: int):
        self.batch_size = global_batch_size
        self.epochs = [pack_epoch(sft_set, seq_len, seed, e) for e in range(num_epochs)]
        self.steps_per_epoch = [-(-len(rows["inputs"]) // global_batch_size)
                                for rows in self.epochs]

    @property
    def num_steps(self) -> int:
        return sum(self.steps_per_epoch)

    def host_rows(self, step: int, first: int, count: int) -> dict[str, np.ndarray]:
        """Rows [first, first + count) of global step `step` (empty rows past an epoch's end)."""
        for epoch, steps in enumerate(self.steps_per_epoch):
            if step < steps:
                break
            step -= steps
        else:
            raise IndexError(f"step beyond the {self.num_steps} steps of the SFT epochs")
        rows = self.epochs[epoch]
        start = step * self.batch_size + first
        out = {}
        for key, array in rows.items():
            part = array[start:start + count]
            pad = count - len(part)
            out[key] = np.concatenate([part, np.zeros((pad,) + array.shape[1:], array.dtype)]) \
                if pad else part
        return out

    def global_batches(self, batch_sharding, start_step: int = 0) -> Iterator[dict]:
        """Global jax.Arrays from `start_step` on; each host builds only its rows."""
        hosts = jax.process_count()
        local = self.batch_size // hosts
        for step in itertools.count(start_step):
            if step >= self.num_steps:
                return
            rows = self.host_rows(step, jax.process_index() * local, local)
            yield {k: jax.make_array_from_process_local_data(batch_sharding, v)
                   for k, v in rows.items()}
