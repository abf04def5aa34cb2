"""Step 2 of SLM as its own job: score a corpus once with the reference model.

`score` runs the frozen reference over the packed training stream and writes,
per packed sequence, the tokens and the reference's per-token loss. A `train`
run with `SelectionConfig.mode = 'slm_offline'` and `train.scored_data`
pointing here reads them back and skips the reference forward entirely, so an
ablation over the selection ratio costs one scoring pass, not one reference
forward per run.

Layout of `out_dir` (local or gs://):
    index.json            global batch size, sequence length, batches, writers
    w{P}-{K}.npz          writer process P's rows of global batches
                          [K*batches_per_shard, (K+1)*batches_per_shard)
    sketch-w{P}.npz       histograms of the corpus's scores (slm_jax/data/score_sketch.py),
                          for SelectionConfig.scope='global' 
Every host reads exactly the rows of each global batch it holds, whatever
the number of hosts that wrote the files.
"""

from __future__ import annotations

import itertools
import os
import time

import gin
import jax
import jax.numpy as jnp

from slm_jax import model as model_lib
from slm_jax.data import iterator, pipeline
from slm_jax.data.score_sketch import ScoreSketch
from slm_jax.data.scored import ScoredWriter, local_rows
from slm_jax.trainer import checks
from slm_jax.parallel import ownership, sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.train_step import make_score_step
from slm_jax.trainer.reference_model import load_reference


def _student_losses(checkpoint: str, student: model_lib.ModelConfig, runtime):
    params = runtime.restore_params(checkpoint, student, binding="score.student_checkpoint")
    losses = runtime.jit_eval(make_score_step(student), student,
                              out_sharding=runtime.batch_sharding())
    return lambda batch: losses(params, batch)


def _sketch(sketch: ScoreSketch, batch, ref_loss, student_loss) -> None:
    """This host's rows into the corpus sketch, as `selection_score` ranks them."""
    valid = local_rows(batch["loss_weights"])
    ref = local_rows(ref_loss).astype("float64")
    sketch.add("reference", -ref, valid)
    if student_loss is not None:
        own = local_rows(student_loss).astype("float64")
        sketch.add("student", own, valid)
        sketch.add("excess", own - ref, valid)


@gin.configurable
@ownership.owns("out_dir", binding="score.out_dir")
def score(out_dir: str = gin.REQUIRED, *,
          data: pipeline.DataConfig | None = None,
          reference: ReferenceConfig | None = None,
          model: model_lib.ModelConfig | None = None,
          mesh: sharding.MeshConfig | None = None,
          num_batches: int | None = None,
          batches_per_shard: int = 64,
          loss_dtype: str = "float32",
          student_checkpoint: str | None = None) -> dict:
    """Scores `num_batches` global batches (default: one pass over the data).

    Args:
      out_dir: where the scored shards go (local path or gs://; format: slm_jax/data/scored.py).
      reference: the reference model (`ReferenceConfig.checkpoint`, `.dtype`, `.model`).
      model: the student's ModelConfig (the reference's unless `ReferenceConfig.model` is set).
      loss_dtype: storage dtype of the reference loss. float32 keeps the
        selection identical to online SLM; bfloat16/float16 halve the size
        and may flip near-ties.
      student_checkpoint: the student's starting params (its train.init_checkpoint); its
        losses are computed too, only for the corpus sketch of the "student" and
        "excess" scores that SelectionConfig.scope='global' ranks against.
    Returns {"tokens": scored tokens, "tokens_per_s": throughput, "batches": n}.
    """
    data = data or pipeline.DataConfig()
    reference = reference or ReferenceConfig()
    student = model or model_lib.ModelConfig()
    runtime = Runtime.from_config(mesh)
    checks.check_context(data, reference.model_config(student))
    checks.check_batch(data, runtime)
    checks.check_tokenizers(data, reference.model_config(student), reference)
    writer = ScoredWriter(out_dir, batches_per_shard=batches_per_shard,
                          loss_dtype=jnp.dtype(loss_dtype))
    with runtime.activate():
        ref = load_reference(reference, student, runtime)
        reference_losses = ref.per_token_losses(runtime, out_sharding=runtime.batch_sharding())
        student_losses = student_checkpoint and _student_losses(student_checkpoint, student,
                                                                runtime)
        batches = iterator.global_batches(data, runtime.mesh, runtime.batch_sharding(),
                                          repeat=num_batches is not None)
        sketch = ScoreSketch()
        start = time.perf_counter()
        for batch in itertools.islice(batches, num_batches):
            ref_loss = reference_losses(batch)
            writer.add(batch, ref_loss)
            _sketch(sketch, batch, ref_loss, student_losses and student_losses(batch))
        elapsed = time.perf_counter() - start
    if writer.num_batches == 0:
        raise ValueError(f"DataConfig.file_pattern={data.file_pattern!r} gave no batches to score.")
    sketch.write(out_dir, jax.process_index())
    checkpoint = reference.checkpoint
    writer.close(global_batch_size=data.global_batch_size, seq_len=data.seq_len, info={
        "reference_checkpoint": checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)})
    # Local token counts; with several hosts each reports its own share.
    result = {"batches": writer.num_batches, "tokens": writer.num_tokens,
              "tokens_per_s": writer.num_tokens / elapsed}
    if jax.process_index() == 0:
        print(f"[score] {writer.num_batches} batches, {writer.num_tokens:,} tokens on this host, "
              f"{result['tokens_per_s']:,.0f} tokens/s -> {out_dir}")
    return result
