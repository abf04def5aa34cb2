"""Data: seqio tasks over text files, packing into LM batches, the resumable data order,
the scored-data format of SLM step 2, tokenizers and corpus preparation (the generated
toy corpora are in slm_jax/corpora/)."""

# What every packed LM batch holds, [global_batch, seq_len] each (see pipeline.py); the
# train step reads exactly these, plus "ref_loss" in mode slm_offline (see scored.py).
BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_weights")
