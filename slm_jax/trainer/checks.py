"""Checks every job runs on its configs before touching anything, each naming the gin
binding to change (a job's own argument by the name its caller passes in)."""

from __future__ import annotations

from slm_jax import model as model_lib
from slm_jax.data import tokenizer


def check_context(data, *models: model_lib.ModelConfig) -> None:
    """The packed rows fit every model's context."""
    limit = min(m.max_seq_len for m in models)
    if data.seq_len > limit:
        raise ValueError(
            f"DataConfig.seq_len={data.seq_len} is longer than ModelConfig.max_seq_len={limit}; "
            "lower DataConfig.seq_len or raise the model's maximum.")


def check_batch(data, runtime, grad_accum: int = 1,
                grad_accum_binding: str = "grad_accum") -> None:
    """Each micro-batch splits evenly over the data-parallel devices.

    `grad_accum_binding` names where the caller's `grad_accum` came from (e.g. the job's
    own gin binding), for the error message.
    """
    dp = runtime.data_parallel_size
    if grad_accum < 1 or data.global_batch_size % grad_accum:
        raise ValueError(f"DataConfig.global_batch_size={data.global_batch_size} is not divisible "
                         f"by {grad_accum_binding}={grad_accum}; change {grad_accum_binding} "
                         "to a divisor of it.")
    micro = data.global_batch_size // grad_accum
    if micro % dp:
        accum = (f" / {grad_accum_binding}={grad_accum}" if grad_accum > 1 else "")
        raise ValueError(
            f"micro-batch of {micro} sequences (DataConfig.global_batch_size="
            f"{data.global_batch_size}{accum}) is not divisible by the data-parallel size {dp} "
            f"(MeshConfig data x fsdp); set DataConfig.global_batch_size to a multiple of "
            f"{dp * grad_accum} or change MeshConfig.data/fsdp.")


def check_vocab_fits_model(vocabulary, model: model_lib.ModelConfig,
                           binding: str = tokenizer.VOCAB_PATH_BINDING) -> None:
    """Every id the tokenizer can emit has a row in the model's embedding table.

    A larger id is out of range for the embedding lookup and the loss, which
    turns the first step's loss into NaN instead of failing.
    """
    tokens = vocabulary.vocab_size
    if tokens > model.vocab_size:
        raise ValueError(
            f"{binding}={vocabulary.path!r} has {tokens} tokens (ids up to {tokens - 1}), more "
            f"than ModelConfig.vocab_size={model.vocab_size}; set ModelConfig.vocab_size "
            f"to at least {tokens} or point {binding} at the model's own tokenizer.")


def check_tokenizers(data, model: model_lib.ModelConfig, reference=None) -> None:
    """Before any step: the data's tokenizer fits `model`, and a reference bound to its own
    tokenizer (`ReferenceConfig.vocab_path`) reads exactly the same tokens.

    Pass `reference` only where the job runs the reference model.
    """
    student = tokenizer.load_vocabulary(data.vocab_path)
    check_vocab_fits_model(student, model)
    if reference is None or not reference.vocab_path:
        return
    binding = "ReferenceConfig.vocab_path"
    other = tokenizer.load_vocabulary(reference.vocab_path, binding=binding)
    if other.fingerprint != student.fingerprint and (
            tokenizer.token_table(other) != tokenizer.token_table(student)):
        raise ValueError(
            f"{binding}={reference.vocab_path!r} is another tokenizer than "
            f"{tokenizer.VOCAB_PATH_BINDING}={data.vocab_path!r} (their tokens or BOS/EOS "
            "differ); excess loss compares the two models token by token, so train the "
            f"reference with the student's tokenizer, or unset {binding} if it already was.")
