"""The `analyze` job: Rho-1 §2.1 token categories and the Figure 2 excess-loss page.

1. Every chosen checkpoint of one run scores the same first `num_batches`
   held-out batches; the per-token losses [C, N] (tokens with loss weight 1)
   are classified into H→H, L→H, H→L and L→L (`token_categories.py`).
2. With a reference checkpoint, the last checkpoint is the student and the
   first held-out batch is shown as HTML, each token coloured by its excess
   loss and marked when SLM would select it (`excess_html.py`).

Outputs go to `<run_dir>/analysis/` (or `out_dir`): token_categories.json,
summary.md and, with a reference, excess_loss.html.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils

from slm_jax import model as model_lib
from slm_jax.analysis import excess_html, token_categories
from slm_jax.data import iterator, pipeline, tokenizer
from slm_jax.trainer import checks
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig, select_tokens
from slm_jax.slm.train_step import make_score_step
from slm_jax.trainer.reference_model import load_reference

MEANINGS = {
    "H→H": "hard and stays hard (flat, final loss above the mean)",
    "L→H": "gets worse (slope above the threshold)",
    "H→L": "learnt (slope below minus the threshold)",
    "L→L": "easy and stays easy (flat, final loss below the mean)",
}


def saved_steps(run_dir: str) -> list[int]:
    """Steps saved under `<run_dir>/checkpoints`, ascending."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(name) for name in os.listdir(ckpt_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(ckpt_dir, name, "params")))


def first_batches(data: pipeline.DataConfig, runtime: Runtime, num_batches: int) -> list[dict]:
    """The first `num_batches` global batches of one pass over `data` (fewer if it is short)."""
    batches = iterator.global_batches(data, runtime.mesh, runtime.batch_sharding(), repeat=False)
    batches = list(itertools.islice(batches, num_batches))
    if not batches:
        raise ValueError(f"DataConfig.file_pattern={data.file_pattern!r} gave no batches; "
                         "point analyze.eval_data at held-out TFRecord files.")
    return batches


def _on_host(x) -> np.ndarray:
    # Batch arrays are sharded over hosts; every host needs all rows.
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Scorer:
    """Per-token loss [B, T] of the run's checkpoints in fp32 (the page's numbers are the
    stored params' own), jitted once, replicated on every host."""

    def __init__(self, model, runtime: Runtime):
        self.model, self.runtime = model_lib.computing_in(model, "float32", "dtype"), runtime
        self._loss_fn = runtime.jit_eval(make_score_step(self.model), self.model)

    def restore(self, path: str, binding: str):
        return self.runtime.restore_params(path, self.model, binding=binding)

    def losses(self, params, batches) -> np.ndarray:
        """[K, B, T] float32 for K batches; meaningful where loss_weights is 1."""
        return np.stack([np.asarray(self._loss_fn(params, b)) for b in batches])


def checkpoint_losses(scorer: Scorer, run_dir: str, steps, batches) -> np.ndarray:
    """[C, K, B, T] per-token losses of each of the C checkpoint `steps` of `run_dir` on the
    same K `batches`."""
    return np.stack([
        scorer.losses(scorer.restore(os.path.join(run_dir, "checkpoints", str(step)),
                                     binding="analyze.steps"), batches)
        for step in steps])


def _resolve_steps(run_dir: str, steps) -> list[int]:
    saved = saved_steps(run_dir)
    if not saved:
        raise ValueError(f"analyze.run_dir={run_dir!r} holds no checkpoints under checkpoints/; "
                         "point it at the run_dir of a `train` run.")
    chosen = saved if steps is None else sorted(int(s) for s in steps)
    missing = sorted(set(chosen) - set(saved))
    if missing:
        raise ValueError(f"analyze.steps={list(steps)} names unsaved steps {missing}; "
                         f"{run_dir}/checkpoints holds {saved}.")
    if len(chosen) < 2:
        raise ValueError(f"analyze needs at least 2 checkpoints to fit loss trajectories, got "
                         f"{chosen}; list more in --gin.analyze.steps or save more often "
                         "(CheckpointConfig.every_steps, CheckpointConfig.keep).")
    return chosen


def _eval_config(eval_data) -> pipeline.DataConfig:
    """The held-out DataConfig, read in file order; a string is its file pattern."""
    if isinstance(eval_data, str):
        if eval_data.startswith("@"):
            raise ValueError(f"analyze.eval_data={eval_data!r}: gin references do not work in "
                             "--gin. flags; bind it in a gin file (analyze.eval_data = "
                             "@eval/DataConfig()) or pass the held-out files' pattern.")
        eval_data = pipeline.DataConfig(file_pattern=eval_data)
    elif eval_data is None:
        eval_data = pipeline.DataConfig()
    elif not isinstance(eval_data, pipeline.DataConfig):
        raise ValueError(f"analyze.eval_data={eval_data!r} is not a DataConfig or file pattern.")
    # Shuffling would make "the first documents" arbitrary.
    return dataclasses.replace(eval_data, shuffle=False)


@gin.configurable
def analyze(run_dir: str = gin.REQUIRED, *,
            eval_data: pipeline.DataConfig | str | None = None,
            reference: ReferenceConfig | None = None,
            steps: list[int] | None = None,
            num_batches: int = 4,
            selection: SelectionConfig | None = None,
            out_dir: str | None = None,
            model: model_lib.ModelConfig | None = None,
            mesh: sharding.MeshConfig | None = None,
            num_documents: int = 4,
            slope_threshold: float = token_categories.SLOPE_THRESHOLD) -> dict:
    """Token categories over a run's checkpoints and, with a reference, the excess-loss page.

    Args:
      run_dir: a `train` run; its checkpoints/ are scored.
      eval_data: held-out data: a DataConfig, or a file pattern taking the
        other fields from the gin-bound DataConfig (the default, None, is that
        DataConfig itself). Read in file order (shuffle off), so the page
        shows the first documents of its first file.
      reference: `ReferenceConfig`; with its checkpoint set, the HTML page is written
        (its dtype is not used: the page shows fp32 losses of the stored params, both
        models').
      steps: checkpoint steps to use (default: all saved), at least two.
      num_batches: held-out batches scored at every checkpoint.
      selection: its `ratio` is the share of the shown batch's tokens marked as selected
        (`SelectionConfig.ratio`).
      out_dir: default `<run_dir>/analysis`.
      num_documents: documents of the first batch shown on the page.
      slope_threshold: |slope| (loss per checkpoint index) that counts as a trend.

    Returns what token_categories.json holds (counts, shares, checkpoints,
    num_tokens, ...; with a reference also "excess_page": tokens_in_batch,
    selected_in_batch, shown_tokens, shown_selected), plus "out_dir" and
    "html" (the page's path, or None).
    """
    ratio = (selection or SelectionConfig()).ratio
    if num_batches < 1:
        raise ValueError(f"analyze.num_batches={num_batches} must be at least 1.")
    steps = _resolve_steps(run_dir, steps)
    model = model or model_lib.ModelConfig()
    reference = reference or ReferenceConfig()
    reference_model = reference.model_config(model)
    data = _eval_config(eval_data)
    runtime = Runtime.from_config(mesh)
    checks.check_context(data, model, reference_model)
    reference.check_compatible(model)
    checks.check_batch(data, runtime)
    checks.check_tokenizers(data, model, reference if reference.checkpoint else None)
    out_dir = out_dir or os.path.join(run_dir, "analysis")

    with runtime.activate():
        batches = first_batches(data, runtime, num_batches)
        scorer = Scorer(model, runtime)
        print(f"[analyze] scoring {len(batches)} batches at checkpoints {steps}")
        loss_CKBT = checkpoint_losses(scorer, run_dir, steps, batches)
        shown = {k: _on_host(batches[0][k]) for k in ("targets", "segment_ids", "loss_weights")}
        weights_KBT = np.stack([_on_host(b["loss_weights"]) for b in batches])
        reference_loss_BT = None
        if reference.checkpoint:
            ref = load_reference(reference, model, runtime, dtype="float32")
            reference_loss_BT = np.asarray(ref.per_token_losses(runtime)(batches[0]))
    loss_CN = loss_CKBT[:, weights_KBT > 0]
    categories = token_categories.classify_tokens(loss_CN, slope_threshold)
    report = {"counts": categories.counts, "shares": categories.shares, "checkpoints": steps,
              "num_tokens": categories.num_tokens, "num_batches": len(batches),
              "eval_data": data.file_pattern, "slope_threshold": categories.slope_threshold,
              "slope_unit": "loss per checkpoint index (least squares over 0..C-1)",
              "mean_final_loss": categories.mean_final_loss,
              "mean_loss_per_checkpoint": [float(loss_N.mean()) for loss_N in loss_CN]}
    page_html = None
    if reference_loss_BT is not None:
        page_html, report["excess_page"] = _excess_page(
            loss_CKBT[-1, 0], reference_loss_BT, shown, data, ratio, num_documents,
            facts={"run": run_dir, "student": f"step {steps[-1]}",
                   "reference": reference.checkpoint, "eval data": data.file_pattern})
    if jax.process_index() == 0:
        _write_outputs(out_dir, run_dir, report, page_html)
    return {**report, "out_dir": out_dir,
            "html": os.path.join(out_dir, "excess_loss.html") if page_html else None}


def _write_outputs(out_dir: str, run_dir: str, report: dict, page_html: str | None):
    os.makedirs(out_dir, exist_ok=True)
    files = {"token_categories.json": json.dumps(report, indent=1, ensure_ascii=False) + "\n",
             "summary.md": summary_markdown(run_dir, report)}
    if page_html is not None:
        files["excess_loss.html"] = page_html
    for name, text in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"[analyze] {report['num_tokens']:,} tokens: " + ", ".join(
        f"{k} {v:.1%}" for k, v in report["shares"].items()) + f" -> {out_dir}")


def _excess_page(student_loss_BT, reference_loss_BT, shown, data, ratio, num_documents, facts):
    excess_BT = student_loss_BT - reference_loss_BT
    # Ranked over the whole shown batch, as SLM's batch scope ranks a training batch.
    selected_BT = np.asarray(select_tokens(excess_BT, shown["loss_weights"], ratio, "batch"))
    documents = excess_html.first_documents(shown["segment_ids"], shown["loss_weights"],
                                            num_documents)
    shown_selected = sum(int((selected_BT[row, pos] > 0).sum()) for row, _, pos in documents)
    stats = {"tokens_in_batch": int((shown["loss_weights"] > 0).sum()),
             "selected_in_batch": int(selected_BT.sum()),
             "shown_tokens": sum(len(pos) for _, _, pos in documents),
             "shown_selected": shown_selected, "ratio": ratio}
    facts = {**facts, "selected": (f"top {ratio:.0%} by excess loss over the first batch: "
                                   f"{stats['selected_in_batch']} of "
                                   f"{stats['tokens_in_batch']} tokens")}
    processor = tokenizer.load_vocabulary(data.vocab_path).tokenizer
    page = excess_html.excess_loss_page(
        targets_BT=shown["targets"], segment_ids_BT=shown["segment_ids"],
        loss_weights_BT=shown["loss_weights"], student_loss_BT=student_loss_BT,
        reference_loss_BT=reference_loss_BT, selected_BT=selected_BT, processor=processor,
        num_documents=num_documents, title="Excess loss per token (Rho-1 Figure 2)", facts=facts)
    return page, stats


def summary_markdown(run_dir: str, report: dict) -> str:
    """The human-readable summary.md of a token_categories.json report."""
    losses = ", ".join(f"{step}: {loss:.3f}" for step, loss in zip(
        report["checkpoints"], report["mean_loss_per_checkpoint"]))
    lines = [
        f"# Token categories of `{run_dir}`", "",
        f"{report['num_tokens']:,} held-out tokens ({report['num_batches']} batches of "
        f"`{report['eval_data']}`) scored at checkpoints {report['checkpoints']}.", "",
        f"Mean loss per checkpoint: {losses}.", "",
        f"Each token's losses are fitted with a least-squares line over the checkpoint index "
        f"0..{len(report['checkpoints']) - 1}; |slope| > {report['slope_threshold']} is a trend, "
        f"otherwise the final loss is compared with the mean final loss "
        f"({report['mean_final_loss']:.3f}).", "",
        "| category | meaning | tokens | share |", "|---|---|---|---|",
        *(f"| {k} | {MEANINGS[k]} | {report['counts'][k]:,} | {report['shares'][k]:.1%} |"
          for k in token_categories.CATEGORIES),
    ]
    page = report.get("excess_page")
    if page:
        lines += ["", f"Excess-loss page: [excess_loss.html](excess_loss.html), the last "
                      f"checkpoint against the reference; top {page['ratio']:.0%} of the first "
                      f"batch selected ({page['selected_in_batch']} of "
                      f"{page['tokens_in_batch']} tokens; {page['shown_selected']} of the "
                      f"{page['shown_tokens']} shown)."]
    return "\n".join(lines) + "\n"
