"""The `demo` job: the three SLM steps end to end on the embedded math corpus.

  0. generate the corpus (noisy web split, clean split, held-out eval split)
     and train a SentencePiece model on it;
  1. reference model: CLM on the clean split;
  2+3. students from the same initial weights on the same web tokens:
     SLM (reference in the step, top `ratio` tokens by excess loss) and CLM;
then a table of held-out clean loss after the same number of corpus tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os

import gin

from slm_jax.corpora import embedded, forum
from slm_jax.data import pipeline, tokenizer
from slm_jax.jobs import train as train_lib
from slm_jax.parallel import ownership
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig


# The generated corpora: the embedded one (tuned on) and a second one to check on.
CORPORA = {"embedded": embedded, "forum": forum}


def prepare_demo_data(work_dir: str, *, vocab_size: int, seed: int, corpus: str = "embedded",
                      vocab_path: str | None = None):
    """Generates a corpus (CORPORA) and, unless `vocab_path` names a tokenizer to use
    (e.g. a converted model's), its SentencePiece model under work_dir/corpus.

    Returns (corpus paths, data_on) where data_on(tfrecord, **overrides) is a
    DataConfig over that split (gin-bound fields such as seq_len apply).
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {sorted(CORPORA)} "
                         "(e.g. --gin.experiment.corpus=\"'forum'\")")
    paths = CORPORA[corpus].generate_corpus(os.path.join(work_dir, "corpus"), seed=seed)
    vocab_path = vocab_path or tokenizer.train_sentencepiece(
        [paths.web_jsonl, paths.clean_jsonl], os.path.join(work_dir, "corpus", "spm"),
        vocab_size=vocab_size, seed=seed)

    return paths, data_over(vocab_path)


def data_over(vocab_path: str):
    """data_on(file_pattern, **overrides): a DataConfig over those files with this
    tokenizer (gin-bound fields such as seq_len apply)."""
    def data_on(file_pattern, **overrides):
        return dataclasses.replace(
            pipeline.DataConfig(file_pattern=file_pattern, vocab_path=vocab_path), **overrides)
    return data_on


@gin.configurable
@ownership.owns("work_dir", binding="demo.work_dir")
def demo(work_dir: str = "runs/demo", *, reference_steps: int = 150, student_steps: int = 200,
         vocab_size: int = 2048, corpus_seed: int = 0) -> dict:
    """Runs reference, SLM and CLM and prints their held-out clean loss.

    Model, optimizer, batch and sequence length come from the usual gin
    configurables (ModelConfig, OptimizerConfig, DataConfig, train.*); the SLM student
    keeps `SelectionConfig.ratio` of the tokens (gin/demo.gin: 0.6).
    Returns {"reference": loss, "clm": loss, "slm": loss, "tokens": n}.
    """
    ratio = SelectionConfig().ratio  # the one binding; a bad ratio fails before any work
    corpus, data_on = prepare_demo_data(work_dir, vocab_size=vocab_size, seed=corpus_seed)
    eval_data = data_on(corpus.eval_tfrecord, shuffle=False)
    runs = {
        "reference": dict(data=data_on(corpus.clean_tfrecord), num_steps=reference_steps,
                          selection=SelectionConfig(mode="clm", ratio=1.0, weighting="hard")),
        "slm": dict(data=data_on(corpus.web_tfrecord), num_steps=student_steps,
                    selection=SelectionConfig(mode="slm", ratio=ratio),
                    reference=ReferenceConfig(
                        checkpoint=os.path.join(work_dir, "reference", "checkpoints"))),
        "clm": dict(data=data_on(corpus.web_tfrecord), num_steps=student_steps,
                    selection=SelectionConfig(mode="clm", ratio=1.0, weighting="hard")),
    }
    results = {}
    for name, kwargs in runs.items():
        summary = train_lib.train(run_dir=os.path.join(work_dir, name), eval_data=eval_data, **kwargs)
        if summary.get("preempted"):   # Ctrl-C / SIGTERM: the same command resumes here
            print(f"[demo] stopped during {name}; run the same command to resume")
            return results
        results[name] = summary["eval_loss"]
    data = runs["clm"]["data"]
    results["tokens"] = student_steps * data.global_batch_size * data.seq_len
    table = format_table(results, ratio, runs["reference"]["num_steps"], runs["reference"]["data"])
    print(table)
    with open(os.path.join(work_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(work_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def format_table(results: dict, ratio: float, reference_steps: int, ref_data) -> str:
    ref_tokens = reference_steps * ref_data.global_batch_size * ref_data.seq_len
    return "\n".join([
        f"Held-out clean loss after {results['tokens']:,} web-corpus tokens per student",
        "",
        "| model | trained on | held-out clean loss |",
        "|---|---|---|",
        f"| reference | {ref_tokens:,} clean tokens (CLM) | {results['reference']:.4f} |",
        f"| CLM student | all web tokens | {results['clm']:.4f} |",
        f"| SLM student | top {ratio:.0%} web tokens by excess loss | {results['slm']:.4f} |",
    ])
