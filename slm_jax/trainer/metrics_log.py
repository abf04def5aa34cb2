"""Run metrics: a console line every N steps, metrics.jsonl, TensorBoard, a progress bar.

Every train line carries where the time went: `step_s` (wall time per step since the last
line, less the time spent in evals: `MetricsLogger.paused`), `data_wait_share` (of it, the
host waiting for batches), `tokens_per_s`, `mfu` (model FLOPs per token x tokens/s over the
devices' peak, slm_jax/hardware.py) and `peak_mem_bytes` (device memory where the backend
reports it, else the process's RSS).

Weights & Biases is optional and off by default: `WandbConfig.project = 'name'` turns it on
(the `wandb` package must be installed); only process 0 logs, and a resumed run continues
the same W&B run (its id is kept in `run_dir/wandb_run_id`). `WandbConfig.mode = 'offline'`
writes under `run_dir/wandb/` with no network (`wandb sync` uploads it later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid

import gin

import jax
import tqdm

from slm_jax import disk, hardware


@gin.configurable
@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Optional Weights & Biases logging of the same metrics (off while `project` is empty)."""

    project: str = ""
    name: str | None = None        # default: the run_dir's name
    entity: str | None = None
    mode: str = "online"           # "online", "offline" (no network) or "disabled"


def _start_wandb(config: WandbConfig, run_dir: str, name: str):
    try:
        import wandb
    except ImportError as e:
        raise ValueError("WandbConfig.project is set but the wandb package is not installed; "
                         "pip install wandb, or leave WandbConfig.project unset.") from e
    id_path = os.path.join(run_dir, "wandb_run_id")
    if os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        with open(id_path, "w") as f:
            f.write(run_id)
    return wandb.init(project=config.project, entity=config.entity, name=config.name or name,
                      id=run_id, resume="allow", dir=run_dir, mode=config.mode,
                      config={"run_dir": os.path.abspath(run_dir)})


class MetricsLogger:
    """Writes from process 0 only; every process keeps the same step count."""

    def __init__(self, run_dir: str, *, total_steps: int, start_step: int = 0,
                 tokens_per_step: int, name: str = "train", progress: bool = True,
                 flops_per_token: float | None = None, wandb: WandbConfig | None = None):
        self.enabled = jax.process_index() == 0
        self.flops_per_token = flops_per_token
        self._wandb = None
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
        # Unbuffered, so a line that fails to write leaves nothing behind to retry.
        self._jsonl = {"": open(os.path.join(run_dir, "metrics.jsonl"), "ab", buffering=0),
                       "eval_": open(os.path.join(run_dir, "eval.jsonl"), "ab", buffering=0)}
        from flax.metrics import tensorboard  # imports TF; only on the logging host
        self._tb = tensorboard.SummaryWriter(os.path.join(run_dir, "tensorboard"))
        wandb = wandb or WandbConfig()
        if wandb.project:
            self._wandb = _start_wandb(wandb, run_dir, name)
        if progress:
            self._bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=name,
                                  unit="step", dynamic_ncols=True, leave=False,
                                  disable=None)  # None: no bar when stderr is not a terminal

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (an eval) is left out of the next line's step_s, tokens/s, MFU."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            last_time, last_step = self._last
            self._last = (last_time + time.perf_counter() - begin, last_step)

    def _append(self, jsonl, line: str, step: int) -> None:
        """One whole line or none: a failed write (a full disk) is cut back off the file."""
        start = jsonl.tell()
        try:
            with disk.writing(os.path.dirname(os.path.abspath(jsonl.name)),
                              f"{os.path.basename(jsonl.name)} at step {step}",
                              intact="its earlier lines and the checkpoints are intact"):
                data = line.encode()
                while data:   # a raw write may write less than asked
                    data = data[jsonl.write(data):]
        except disk.DiskFullError:
            with contextlib.suppress(OSError):
                jsonl.truncate(start)
            raise

    def log_eval(self, step: int, evaluator, params) -> dict:
        """Runs `evaluator(params)` and logs its metrics under `eval_`; its time is not
        counted as train step time."""
        with self.paused():
            return self.log(step, evaluator(params), prefix="eval_")

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
            elapsed = max(now - last_time, 1e-9)
            values["tokens_per_s"] = steps * self.tokens_per_step / elapsed
            values["step_s"] = elapsed / steps
            if "data_wait_s" in values:
                values["data_wait_share"] = min(values["data_wait_s"] / elapsed, 1.0)
            if self.flops_per_token:
                values["mfu"] = self.flops_per_token * values["tokens_per_s"] / hardware.device_peak()[0]
            values["peak_mem_bytes"] = float(hardware.peak_memory_bytes())
            self._last = (now, step)
        if not self.enabled:
            return values
        self._append(self._jsonl[prefix], json.dumps({"step": step, **values}) + "\n", step)
        for k, v in values.items():
            self._tb.scalar(k, v, step)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)
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
                    + f"tok/s {values['tokens_per_s']:.0f}  "
                    + (f"mfu {values['mfu']:.1%}  " if "mfu" in values else "")
                    + (f"data {values['data_wait_share']:.0%}  " if "data_wait_share" in values
                       else "") + f"eta {eta:.0f}s")
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
        if self._wandb is not None:
            self._wandb.finish()
