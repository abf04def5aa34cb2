"""`run.job = 'sft'`: supervised fine-tuning on chat-format jsonl, through the same trainer,
sharded step, optimizer, checkpoints, resume, evals and metrics as pretraining.

The conversations are rendered by `ChatTemplate` (the tora evaluation prompts with the same
one), packed per epoch in an order that is a pure function of (seed, epoch) (slm_jax/data/
sft.py), and trained with loss on the assistant tokens only. `num_epochs` sets the length:
the step count is what the epochs pack to, warm-up and decay are shares of it. Selection
applies inside SFT as in pretraining (`SelectionConfig`): its ranking sees only the assistant
tokens, the only ones with a weight (token selection in SFT, as Token Cleaning does).
"""

from __future__ import annotations

import dataclasses
import logging

import gin

from slm_jax.data import chat, pipeline, sft as sft_data, tokenizer
from slm_jax.data.tasks import resolve_files
from slm_jax.jobs import train as train_lib
from slm_jax.slm.optim import OptimizerConfig


@gin.configurable
def sft(run_dir: str = gin.REQUIRED, *, data_files: str = gin.REQUIRED, num_epochs: int = 3,
        seed: int = 0, warmup_share: float = 0.03, template: chat.ChatTemplate | None = None,
        data: pipeline.DataConfig | None = None, optimizer: OptimizerConfig | None = None,
        **train_kwargs) -> dict:
    """Fine-tunes for `num_epochs` over `data_files` (a glob of chat jsonl, local or gs://).

    Args:
      run_dir: as `train.run_dir`; resumes from its checkpoints.
      data_files: jsonl rows {"messages": [{"role": "user"|"assistant"|"system", "content"}]}.
      num_epochs, seed: the epochs and the seed of their shuffles.
      warmup_share: warm-up steps as a share of all steps (ToRA: 3%), replacing
        `OptimizerConfig.warmup_steps`; the decay (`OptimizerConfig.decay`, ToRA: 'linear')
        runs over the rest.
      data: the batch (`global_batch_size`, `seq_len`) and tokenizer (`vocab_path`);
        its `file_pattern` is set to `data_files`.
      train_kwargs: `train`'s other bindings (init_checkpoint, model, selection, evals, ...).
    Returns the train job's summary.
    """
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"sft.num_epochs={num_epochs!r} must be an int >= 1; set sft.num_epochs.")
    if not 0 <= warmup_share < 1:
        raise ValueError(f"sft.warmup_share={warmup_share!r} must be in [0, 1); set "
                         "sft.warmup_share.")
    # The batch shape and tokenizer; its file_pattern names the SFT files (run records).
    data = data or pipeline.DataConfig(file_pattern=data_files)
    template = (template or chat.ChatTemplate()).resolved(data.vocab_path)
    files = resolve_files(data_files) if data_files else []
    vocabulary = tokenizer.load_vocabulary(data.vocab_path)
    conversations = sft_data.load(files, vocabulary, template, data.seq_len)
    batches = sft_data.SftBatches(conversations, seq_len=data.seq_len,
                                  global_batch_size=data.global_batch_size, seed=seed,
                                  num_epochs=num_epochs)
    steps = batches.num_steps
    optimizer = dataclasses.replace(optimizer or OptimizerConfig(),
                                    warmup_steps=round(warmup_share * steps))
    logging.info("sft: %d conversations from %d file(s), %d epochs = %d steps of %d rows "
                 "(%d skipped as too long)", len(conversations.examples), len(files), num_epochs,
                 steps, data.global_batch_size, len(conversations.skipped[sft_data.OVER_LONG]))
    return train_lib.train(run_dir=run_dir, num_steps=steps, data=data, optimizer=optimizer,
                           batch_source=lambda sharding, start: batches.global_batches(
                               sharding, start), **train_kwargs)
