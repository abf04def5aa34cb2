"""The `experiment` job: Rho-1's SLM-vs-CLM comparison in miniature.

  base       CLM on the web split from random init (the "pretrained" model)
  reference  base + CLM on the clean split                       (SLM step 1)
  scored     the web stream scored once by the reference         (SLM step 2)
  slm, clm   both from base, on exactly the same scored web batches (step 3 vs
             the baseline), evaluated every `eval_every` steps on the held-out
             clean split: loss and exact-match accuracy of greedy answers.
  variants   optional extra SLM students, one per entry of `selection_variants`
             (score, scope[, weighting[, reference source]]): token- vs document-
             level or global selection, what is ranked, how tokens are weighted,
             a self-reference (EMA/snapshot); same tokens and evals.

Your own data instead of the embedded corpus: `web_files`, `clean_files`,
`heldout_files` (TFRecord patterns, e.g. from `python -m slm_jax.data.prepare`) and
`vocab_path`; `base_checkpoint` (e.g. a converted SmolLM2) replaces the base run; the
accuracy curve comes from `problems` (a jsonl of question/answer) or from eval hooks
such as `[@HarnessEval()]` (lm-eval tasks) with `accuracy_metric` naming the one to plot.

Writes curves.png (held-out loss and accuracy against tokens seen, the
paper's Figure 1 in small), results.md and results.json into work_dir.
"""

from __future__ import annotations

import json
import os

import gin

from slm_jax import model as model_lib
from slm_jax.evals import problem_task
from slm_jax.evals.train_evals import HarnessEval
from slm_jax.jobs import score as scoring
from slm_jax.jobs import train as train_lib
from slm_jax.jobs.demo import CORPORA, data_over, prepare_demo_data
from slm_jax.parallel import ownership
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig


def problems_eval(work_dir: str, problems: str, *, exemplars: str | None, labels, num_problems: int,
                  num_fewshot: int, max_new_tokens: int) -> HarnessEval:
    """The accuracy curve's eval: an lm-eval task over `problems` (greedy, graded by
    math_eval's grader, `num_fewshot` solved exemplars in the prompt)."""
    include_path = problem_task.write_problem_task(
        os.path.join(work_dir, "lm_eval_task"), problems, exemplars=exemplars, labels=labels,
        max_gen_toks=max_new_tokens)
    return HarnessEval(tasks=problem_task.TASK_NAME, include_path=include_path,
                       include_defaults=False, limit=num_problems,
                       num_fewshot=num_fewshot if exemplars else 0, max_gen_toks=max_new_tokens)


def tokens_to_reach(tokens: list[float], losses: list[float], target: float) -> float | None:
    """First token count at which a loss curve reaches `target` (linear interpolation)."""
    prev_t, prev_l = 0.0, None
    for t, l in zip(tokens, losses):
        if l <= target:
            if prev_l is None or prev_l == l:
                return t
            return prev_t + (t - prev_t) * (prev_l - target) / (prev_l - l)
        prev_t, prev_l = t, l
    return None


ACCURACY_METRIC = f"{problem_task.TASK_NAME}_accuracy"


def read_curve(run_dir: str, tokens_per_step: int,
               accuracy_metric: str = ACCURACY_METRIC) -> dict[str, list[float]]:
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rows = list({r["step"]: r for r in rows}.values())  # a resumed run may repeat a step
    return {"tokens": [r["step"] * tokens_per_step for r in rows],
            "loss": [r["eval_loss"] for r in rows],
            "accuracy": [r.get(f"eval_{accuracy_metric}", float("nan")) for r in rows]}


_OWN_DATA = ("web_files", "clean_files", "heldout_files", "vocab_path")


def own_data(vocab_path: str, **patterns):
    """data_on(file_pattern, **overrides) over your files; every binding checked before
    any work."""
    given = {"vocab_path": vocab_path, **patterns}
    missing = [name for name in _OWN_DATA if not given.get(name)]
    if missing:
        raise ValueError(f"experiment on your own data needs all of {', '.join(_OWN_DATA)}; set "
                         + " ".join(f"--gin.experiment.{name}=..." for name in missing))
    return data_over(vocab_path)


def plot_curves(curves: dict, path: str, ratio: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in [("clm", dict(color="tab:gray", label="CLM (all tokens)")),
                        ("slm", dict(color="tab:blue", label=f"SLM (top {ratio:.0%})"))]:
        c = curves[name]
        ax_loss.plot(c["tokens"], c["loss"], marker="o", **style)
        ax_acc.plot(c["tokens"], c["accuracy"], marker="o", **style)
    ax_loss.set(xlabel="web tokens seen", ylabel="held-out clean loss", title="Held-out loss")
    ax_acc.set(xlabel="web tokens seen", ylabel="exact-match accuracy",
               title="Greedy answers to held-out problems")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(curves: dict, ratio: float) -> tuple[str, dict]:
    clm, slm = curves["clm"], curves["slm"]
    reach = tokens_to_reach(slm["tokens"], slm["loss"], clm["loss"][-1])
    speedup = clm["tokens"][-1] / reach if reach else None
    lines = [f"SLM (top {ratio:.0%} by excess loss) vs CLM, same base model, same web tokens",
             "", "| web tokens seen | CLM loss | SLM loss | CLM accuracy | SLM accuracy |",
             "|---|---|---|---|---|"]
    for i, t in enumerate(clm["tokens"]):
        lines.append(f"| {t:,} | {clm['loss'][i]:.4f} | {slm['loss'][i]:.4f} | "
                     f"{clm['accuracy'][i]:.1%} | {slm['accuracy'][i]:.1%} |")
    lines.append("")
    lines.append(f"Reference model: {curves['reference_loss']:.4f} held-out loss.")
    if reach:
        lines.append(f"SLM reaches CLM's final loss ({clm['loss'][-1]:.4f}) after {reach:,.0f} "
                     f"tokens: {speedup:.2f}x fewer than CLM's {clm['tokens'][-1]:,}.")
    else:
        lines.append(f"SLM does not reach CLM's final loss ({clm['loss'][-1]:.4f}) within "
                     f"{slm['tokens'][-1]:,} tokens.")
    return "\n".join(lines), {"tokens_to_reach_clm_final_loss": reach, "speedup": speedup}


def variant_selections(variants, ratio: float) -> dict[str, tuple[SelectionConfig,
                                                                  ReferenceConfig | None]]:
    """{run name: (SelectionConfig, ReferenceConfig or None)} of the extra SLM students,
    checked before any work.

    Each is (score, scope), (score, scope, weighting) or (score, scope, weighting, source):
    the weighting's tau/lam/kappa are SelectionConfig's bindings; a source 'ema' or
    'snapshot' trains online (mode 'slm') against the student's own history
    (ReferenceConfig's ema_decay/snapshot_every bindings) on the same scored tokens. The
    Rho-1 pair ('excess', 'batch') with hard weighting is the "slm" student itself.
    """
    main = SelectionConfig(mode="slm_offline", ratio=ratio, weighting="hard")
    selections = {}
    for variant in variants:
        if not (isinstance(variant, (tuple, list)) and len(variant) in (2, 3, 4)):
            raise ValueError(
                    f"experiment.selection_variants holds {variant!r}; each entry is "
                    "(score, scope), (score, scope, weighting) or (score, scope, weighting, "
                    "reference source), e.g. --gin.experiment.selection_variants="
                    "\"[('student', 'batch'), ('excess', 'batch', 'dense'), "
                    "('excess', 'batch', 'hard', 'ema')]\".")
        score, scope, weighting, source = (*variant, *("hard", "checkpoint")[len(variant) - 2:])
        reference = None if source == "checkpoint" else ReferenceConfig(
            source=source, checkpoint=None, model=None)
        selection = SelectionConfig(mode="slm_offline" if reference is None else "slm",
                                    ratio=ratio, score=score, scope=scope, weighting=weighting)
        name = (f"slm_{score}_{scope}" + ("" if weighting == "hard" else f"_{weighting}")
                + ("" if reference is None else f"_{source}"))
        selections["slm" if selection == main else name] = (selection, reference)
    return selections


def summarize_variants(curves: dict, selections: dict[str, SelectionConfig]) -> tuple[str, dict]:
    """One row per SLM variant: tokens to reach CLM's final loss, and its own final loss."""
    clm = curves["clm"]
    target = clm["loss"][-1]
    lines = [f"Selection variants (CLM: {target:.4f} after {clm['tokens'][-1]:,} tokens)", "",
             "| run | score | scope | weighting | reference | tokens to reach CLM's final loss | "
             "final held-out loss | final accuracy |", "|---|---|---|---|---|---|---|---|"]
    rows = {}
    for name, (selection, reference) in selections.items():
        curve = curves[name]
        reach = tokens_to_reach(curve["tokens"], curve["loss"], target)
        source = reference.source if reference else "checkpoint"
        rows[name] = {"score": selection.score, "scope": selection.scope,
                      "weighting": selection.weighting, "reference": source,
                      "tokens_to_reach_clm_final_loss": reach, "final_loss": curve["loss"][-1],
                      "final_accuracy": curve["accuracy"][-1]}
        reached = f"{reach:,.0f}" if reach else "not reached"
        lines.append(f"| {name} | {selection.score} | {selection.scope} | "
                     f"{selection.weighting} | {source} | {reached} | {curve['loss'][-1]:.4f} | "
                     f"{curve['accuracy'][-1]:.1%} |")
    return "\n".join(lines), rows


def _preempted(name: str, summary: dict) -> bool:
    """Ctrl-C / SIGTERM stopped run `name` (checkpointed): the job stops too, and the
    same command resumes it; the finished runs are not trained again."""
    if summary.get("preempted"):
        print(f"[experiment] stopped during {name}; run the same command to resume", flush=True)
    return bool(summary.get("preempted"))


@gin.configurable
@ownership.owns("work_dir", binding="experiment.work_dir")
def experiment(work_dir: str = "runs/experiment", *,
               base_steps: int = 60,
               reference_steps: int = 150,
               student_steps: int = 240,
               eval_every: int = 40,
               eval_base: bool = False,
               eval_problems: int = 64,
               max_new_tokens: int = 96,
               num_fewshot: int = 0,
               vocab_size: int = 2048,
               corpus: str = "embedded",
               corpus_seed: int = 0,
               selection_variants=(),
               web_files: str | None = None,
               clean_files: str | None = None,
               heldout_files: str | None = None,
               vocab_path: str | None = None,
               base_checkpoint: str | None = None,
               problems: str | None = None,
               evals=(),
               accuracy_metric: str = ACCURACY_METRIC) -> dict:
    """Runs base -> reference -> scoring -> SLM and CLM students; returns the summary.

    eval_base: the students' curves also start with an eval of the base model (step 0).
    selection_variants: (score, scope) pairs (`SelectionConfig.score`/`.scope`) or
        (score, scope, weighting) triples (`SelectionConfig.weighting`: dense, sparse,
        prob, with SelectionConfig's tau/lam/kappa), each trained as one more SLM student at `SelectionConfig.ratio` (the share of
        tokens every SLM student keeps; gin/runs/*_experiment.gin: 0.6) on the same scored tokens,
        e.g. [('student', 'batch'), ('reference', 'batch'), ('excess', 'document')].
    corpus: the generated corpus when no files are given: 'embedded' (the demo's) or
        'forum' (a second one, for checking a recipe tuned on the first).
    web_files, clean_files, heldout_files: your corpus (all three with vocab_path).
    vocab_path: the tokenizer; alone, it tokenizes the generated corpus (e.g. a converted
        model's directory) instead of a SentencePiece model trained on it.
    base_checkpoint: the model reference and students start from (no base run).
    problems: jsonl of {question, answer} for the accuracy curve, run as an lm-eval task
        (evals/problem_task.py; default: the generated corpus's held-out problems) with
        `num_fewshot` exemplars of the corpus in the prompt.
    evals, accuracy_metric: eval hooks instead (e.g. [@HarnessEval()]) and the metric of
        theirs the curve plots (e.g. 'gsm8k_cot_exact_match_flexible-extract').
    """
    ratio = SelectionConfig().ratio  # the one binding; a bad ratio fails before any work
    variants = variant_selections(selection_variants, ratio)
    if any((web_files, clean_files, heldout_files)):
        data_on = own_data(vocab_path, web_files=web_files, clean_files=clean_files,
                           heldout_files=heldout_files)
        splits = (web_files, clean_files, heldout_files)
        exemplars, labels = None, CORPORA["embedded"].PROMPT_LABELS
    else:
        paths, data_on = prepare_demo_data(work_dir, vocab_size=vocab_size, seed=corpus_seed,
                                           corpus=corpus, vocab_path=vocab_path)
        splits = (paths.web_tfrecord, paths.clean_tfrecord, paths.eval_tfrecord)
        problems = problems or paths.eval_problems
        exemplars, labels = paths.exemplars, CORPORA[corpus].PROMPT_LABELS
    web, clean = data_on(splits[0]), data_on(splits[1])
    # The students see a different slice of the web stream than the base did.
    student_web = data_on(splits[0], seed=web.seed + 1)
    eval_data = data_on(splits[2], shuffle=False)
    model = model_lib.ModelConfig()
    path = lambda *p: os.path.join(work_dir, *p)

    if not base_checkpoint and _preempted("base", train_lib.train(
            run_dir=path("base"), data=web, num_steps=base_steps,
            selection=SelectionConfig(mode="clm", ratio=1.0, weighting="hard"))):
        return {"preempted": True}
    base = base_checkpoint or path("base", "checkpoints")
    reference = train_lib.train(run_dir=path("reference"), data=clean, num_steps=reference_steps,
                                selection=SelectionConfig(mode="clm", ratio=1.0,
                                                          weighting="hard"),
                                eval_data=eval_data, init_checkpoint=base)
    if _preempted("reference", reference):
        return {"preempted": True}
    if not os.path.exists(path("scored", "index.json")):
        # A global scope ranks against the corpus's excess at the students' start (the base).
        global_scope = any(s.scope == "global" for s, _ in variants.values())
        scoring.score(path("scored"), data=student_web, model=model, num_batches=student_steps,
                      reference=ReferenceConfig(checkpoint=path("reference", "checkpoints"),
                                                model=model, dtype="float32"),
                      student_checkpoint=base if global_scope else None)
    hooks = list(evals) or ([problems_eval(work_dir, problems, exemplars=exemplars, labels=labels,
                                           num_problems=eval_problems, num_fewshot=num_fewshot,
                                           max_new_tokens=max_new_tokens)]
                            if problems else [])
    students = {"slm": (SelectionConfig(mode="slm_offline", ratio=ratio, weighting="hard"), None),
                **variants,
                "clm": (SelectionConfig(mode="clm", ratio=1.0, weighting="hard"), None)}
    for name, (selection, self_reference) in students.items():
        if _preempted(name, train_lib.train(
                run_dir=path(name), data=student_web, num_steps=student_steps,
                selection=selection, scored_data=path("scored"), init_checkpoint=base,
                eval_data=eval_data, eval_every=eval_every, eval_first=eval_base,
                evals=hooks, reference=self_reference)):
            return {"preempted": True}

    tokens_per_step = student_web.global_batch_size * student_web.seq_len
    curves = {name: read_curve(path(name), tokens_per_step, accuracy_metric)
              for name in students}
    curves["reference_loss"] = reference["eval_loss"]
    return write_results(work_dir, curves, variants, ratio)


def write_results(work_dir: str, curves: dict, variants: dict, ratio: float) -> dict:
    """curves.png, results.md (printed too) and results.json; returns the summary."""
    plot_curves(curves, os.path.join(work_dir, "curves.png"), ratio)
    table, summary = summarize(curves, ratio)
    if variants:
        variant_table, summary["variants"] = summarize_variants(curves, variants)
        table += "\n\n" + variant_table
    print(table)
    with open(os.path.join(work_dir, "results.md"), "w") as f:
        f.write(table + "\n\n![curves](curves.png)\n")
    with open(os.path.join(work_dir, "results.json"), "w") as f:
        json.dump({**summary, "curves": curves}, f, indent=1)
    return summary
