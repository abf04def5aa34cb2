"""Orbax checkpoints: async saves every N steps, keep the last K, resume.

A checkpoint holds four items: `params`, `opt_state`, `meta` (JSON: step and what
produced it) and `data_state` (JSON: the data iterator's positions, so a resumed run
continues with the very batch it would have seen), and a fifth, `ref_params`, when the
reference is the student's own EMA or snapshot (ReferenceConfig.source). One orbax save commits them together,
and `keep` and cleanup apply to all of them alike. Keeping params separate lets an SLM run
restore the reference model's params alone, read-only, from another run's directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from slm_jax import disk
from slm_jax.parallel import ownership
from slm_jax.slm.train_step import TrainState


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000    # also saved at the end of the run
    keep: int = 3              # the last K are kept
    async_save: bool = True


def _abstract_with_shardings(shardings, abstract_tree):
    return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shardings, abstract_tree)


ITEMS = ("params", "opt_state", "meta", "data_state", "ref_params")


class CheckpointMismatchError(ValueError):
    """A readable checkpoint of another model: never a reason to fall back to an older one."""


class Checkpointer:
    """Saves and restores TrainState under `<run_dir>/checkpoints`."""

    def __init__(self, directory: str, config: CheckpointConfig = CheckpointConfig()):
        self.directory = os.path.abspath(directory)
        self.config = config
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.keep,
                enable_async_checkpointing=config.async_save),
            item_names=ITEMS)

    def due(self, step: int) -> bool:
        return step % self.config.every_steps == 0

    def reached_preemption(self, step: int) -> bool:
        return self._manager.reached_preemption(step)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, *, force: bool = False, meta: dict | None = None,
             data_state: dict | None = None) -> bool:
        """Saves `state` (and the data iterator's `data_state`) as one checkpoint."""
        step = int(jax.device_get(state.step))
        # Orbax would also save the first step it sees; the interval is kept here.
        if step == self.latest_step() or not (force or step % self.config.every_steps == 0):
            return False
        ownership.check(self.directory)   # a job whose lease was taken over writes no more
        what, intact = f"the checkpoint of step {step}", self._intact
        needed = _state_bytes(state)
        free = disk.free_bytes(self.directory)
        if free is not None and free < needed:
            self.wait()   # the save in flight commits (or fails) first; then what is intact
            disk.check_space(self.directory, what, needed, intact=intact())
        items = {"params": ocp.args.StandardSave(state.params),
                 "opt_state": ocp.args.StandardSave(state.opt_state),
                 "meta": ocp.args.JsonSave({"step": step, **(meta or {})})}
        if data_state is not None:
            items["data_state"] = ocp.args.JsonSave(data_state)
        if state.ref_params is not None:
            items["ref_params"] = ocp.args.StandardSave(state.ref_params)
        # An async save fails at the next save or wait: both say so in one line.
        with self._cleaned_on_full_disk(), disk.writing(self.directory, what, needed=needed,
                                                        intact=intact):
            return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    @contextlib.contextmanager
    def _cleaned_on_full_disk(self):
        """A save that ran out of space leaves orbax's uncommitted `<step>.orbax-checkpoint-tmp`
        behind; it is removed, so the space it took is free for the restart."""
        try:
            yield
        except disk.DiskFullError:
            if jax.process_index() == 0:
                for partial in epath.Path(self.directory).glob("*.orbax-checkpoint-tmp*"):
                    partial.rmtree() if partial.is_dir() else partial.unlink()
            raise

    def _intact(self) -> str:
        """From the directory: orbax counts a step whose async save is still failing."""
        committed = [int(p.name) for p in epath.Path(self.directory).glob("*")
                     if p.name.isdigit()]
        return (f"the checkpoint of step {max(committed)} is intact" if committed
                else "no checkpoint was written yet")

    def restore_latest_readable(self, abstract_state: TrainState,
                                shardings: TrainState) -> TrainState:
        """The newest checkpoint that reads back whole. An unreadable one (truncated or
        corrupted files) is moved aside to `<step>.unreadable` with a warning naming it, and
        the next older one is tried; when none is left the error names the newest."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return self.restore(abstract_state, shardings, step)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise plain Exceptions)
                reason = str(e).splitlines()[0][:200]
                if step == steps[-1]:
                    raise ValueError(
                        f"the checkpoint {self.step_dir(step)} cannot be read ({reason}) and no "
                        "older one is left; delete the run's checkpoints/ or start a new "
                        "run_dir.") from e
                aside = self.step_dir(step) + ".unreadable"
                epath.Path(self.step_dir(step)).rename(aside)
                logging.warning("the checkpoint %s cannot be read (%s); moved it to %s and "
                                "resuming from an older one", self.step_dir(step), reason, aside)
                self._manager.reload()
        raise ValueError(f"{self.directory} holds no checkpoint to resume from.")

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore_data_state(self, step: int) -> dict | None:
        """The data iterator's state saved with `step`, or None for a checkpoint without one."""
        if not (epath.Path(self.step_dir(step)) / "data_state").exists():
            return None
        return self._manager.restore(step, args=ocp.args.Composite(
            data_state=ocp.args.JsonRestore())).data_state

    def restore(self, abstract_state: TrainState, shardings: TrainState,
                step: int | None = None) -> TrainState:
        """`abstract_state.ref_params` set: restores them too when the checkpoint has them
        (else the state's ref_params is None: a checkpoint from before the reference)."""
        step = self.latest_step() if step is None else step
        # From the metadata first: a failed orbax restore leaves its reads running, and
        # their errors would print after ours at exit.
        detail = _shape_mismatch(os.path.join(self.step_dir(step), "params"),
                                 abstract_state.params)
        if detail and (" on disk but " in detail or " on disk not in " in detail):
            raise CheckpointMismatchError(
                f"the checkpoint {self.step_dir(step)} was written by another model ({detail}); "
                "resume it with the run's own ModelConfig (its config.gin) or start a new "
                "run_dir.")
        target = _abstract_with_shardings(shardings, abstract_state)
        items = dict(params=ocp.args.StandardRestore(target.params),
                     opt_state=ocp.args.StandardRestore(target.opt_state),
                     meta=ocp.args.JsonRestore())
        if target.ref_params is not None and (
                epath.Path(self.step_dir(step)) / "ref_params").exists():
            items["ref_params"] = ocp.args.StandardRestore(target.ref_params)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as e:
            detail = _shape_mismatch(os.path.join(self.step_dir(step), "params"),
                                     abstract_state.params)
            if not (detail and (" on disk but " in detail or " on disk not in " in detail)):
                raise  # nothing says another model wrote it: an unreadable checkpoint
            raise CheckpointMismatchError(
                f"the checkpoint {self.step_dir(step)} was written by another model ({detail}); "
                "resume it with the run's own ModelConfig (its config.gin) or start a new "
                "run_dir.") from e
        return TrainState(step=jax.device_put(jax.numpy.int32(restored.meta["step"]), shardings.step),
                           params=restored.params, opt_state=restored.opt_state,
                           ref_params=restored.ref_params if "ref_params" in items else None)

    def wait(self):
        """Blocks until the last (async) save is committed."""
        with self._cleaned_on_full_disk(), disk.writing(self.directory, "the last checkpoint",
                                                        intact=self._intact):
            self._manager.wait_until_finished()

    def close(self):
        self.wait()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _state_bytes(state: TrainState) -> int:
    """What this host writes for `state`, with a margin for orbax's metadata."""
    leaves = jax.tree.leaves((state.params, state.opt_state, state.ref_params))
    return int(sum(x.nbytes for x in leaves) / jax.process_count() * 1.02) + (1 << 20)


def _shape_mismatch(params_dir: str, abstract_params) -> str | None:
    """How the params saved in `params_dir` differ from `abstract_params`, in a few words."""
    try:
        saved = ocp.StandardCheckpointer().metadata(params_dir).item_metadata
    except Exception:  # noqa: BLE001  (only for the error message)
        return None

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(getattr(tree, "tree", tree))[0]
        return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}
    saved, wanted = flat(saved), flat(abstract_params)
    diffs = [f"{k} is {saved[k]} on disk but {wanted[k]} in the model"
             for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
    missing, extra = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
    if missing:
        diffs.append(f"{len(missing)} params missing on disk (e.g. {missing[0]})")
    if extra:
        diffs.append(f"{len(extra)} params on disk not in the model (e.g. {extra[0]})")
    return "; ".join(diffs[:2]) or None


def restore_params(path: str, abstract_params, shardings, *, binding: str):
    """Params of the latest checkpoint under `path`, read-only (e.g. the reference model).

    `path` is a run's checkpoint directory (holding numbered steps), one step's
    directory, or a directory holding `checkpoints/` (a run_dir, or what
    `slm_jax.convert hf_to_orbax --out` wrote). Errors name `binding`, the gin
    setting that gave `path`.
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if os.path.isfile(path):
        raise ValueError(f"{binding}={path!r} is a file; point it at a checkpoint directory "
                         "written by a `train` run (<run_dir>/checkpoints).")
    if not os.path.isdir(path):
        raise ValueError(f"{binding}={path!r} does not exist; point it at a checkpoint "
                         "directory written by a `train` run (<run_dir>/checkpoints).")
    manager_dir, step = path, None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
        manager_dir, step = os.path.dirname(path), int(base)
    manager = ocp.CheckpointManager(manager_dir, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False), item_names=ITEMS)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{binding}={path!r} holds no checkpoint; point it at the "
                             "checkpoints/ directory of a finished `train` run.")
        target = _abstract_with_shardings(shardings, abstract_params)
        mismatch = lambda detail: ValueError(  # noqa: E731
            f"{binding}={path!r} (step {step}) does not match the model config: {detail}; use "
            "a checkpoint of the same ModelConfig (or set the ModelConfig it was trained with).")
        detail = _shape_mismatch(os.path.join(manager_dir, str(step), "params"), abstract_params)
        if detail:   # before orbax starts reads it would leave running
            raise mismatch(detail)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target)))
        except (ValueError, KeyError) as e:
            raise mismatch(str(e).splitlines()[0][:300]) from e
        return restored.params
    finally:
        manager.close()
