"""Run metrics: a console line every N steps, metrics.jsonl, TensorBoard, a progress bar."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import tqdm


class MetricsLogger:
    """Writes from process 0 only; every process keeps the same step count."""

    def __init__(self, run_dir: str, *, total_steps: int, start_step: int = 0,
                 tokens_per_step: int, name: str = "train", progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.name = name
        self._last = (time.perf_counter(), start_step)
        self._start = self._last
        self._jsonl = self._tb = self._bar = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        # Train lines (each with step and loss) and eval lines live in separate files.
        self._jsonl = {"": open(os.path.join(run_dir, "metrics.jsonl"), "a"),
                       "eval_": open(os.path.join(run_dir, "eval.jsonl"), "a")}
        from flax.metrics import tensorboard  # imports TF; only on the logging host
        self._tb = tensorboard.SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if progress:
            self._bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=name,
                                  unit="step", dynamic_ncols=True, leave=False,
                                  disable=None)  # None: no bar when stderr is not a terminal

    def step_done(self, step: int):
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def log(self, step: int, metrics: dict, *, prefix: str = ""):
        """`metrics` may hold device scalars; fetching them syncs the host."""
        values = {prefix + k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        if not prefix:
            last_time, last_step = self._last
            steps = max(step - last_step, 1)
            values["tokens_per_s"] = steps * self.tokens_per_step / max(now - last_time, 1e-9)
            values["step_s"] = (now - last_time) / steps
            self._last = (now, step)
        if not self.enabled:
            return values
        self._jsonl[prefix].write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl[prefix].flush()
        for k, v in values.items():
            self._tb.scalar(k, v, step)
        self._tb.flush()
        self._print(step, values, now)
        return values

    def _print(self, step, values, now):
        if "loss" in values:
            start_time, start_step = self._start
            rate = (step - start_step) / max(now - start_time, 1e-9)
            eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
            line = (f"[{self.name}] step {step}/{self.total_steps}  loss {values['loss']:.4f}  "
                    f"selected {values.get('selected_loss', values['loss']):.4f}  "
                    + (f"ref {values['ref_loss']:.4f}  " if "ref_loss" in values else "")
                    + f"tok/s {values['tokens_per_s']:.0f}  eta {eta:.0f}s")
        else:
            line = f"[{self.name}] step {step}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in values.items())
        (tqdm.tqdm.write if self._bar is not None else print)(line)

    def preempted(self, step: int):
        logging.warning("preempted: checkpoint of step %d written; exiting", step)
        if self.enabled:
            print(f"[{self.name}] preempted at step {step}; checkpoint saved, "
                  "re-run the same command to resume", flush=True)

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        for f in self._jsonl.values():
            f.close()
        self._tb.close()
