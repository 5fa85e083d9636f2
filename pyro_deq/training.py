"""Training loops: SVI over the data with progress reporting and checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.util
from pyro import poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from .errors import ConvergenceWarning, NumericalError, warn_at_caller

__all__ = ["TrainingResult", "load_checkpoint", "save_checkpoint", "train"]

logger = logging.getLogger(__name__)

# Version of the checkpoint layout written by :func:`train`; a file of another
# version is rejected instead of being half read.
CHECKPOINT_VERSION = 1


@dataclass
class TrainingResult:
    """Outcome of :func:`train`.

    :ivar list losses: the loss (negative ELBO per row) at each step.
    :ivar float seconds: wall time.
    :ivar int n_steps: steps taken in total, including those of a resumed checkpoint.
    :ivar int resumed_from: the step a checkpoint resumed from, 0 for a fresh run.
    :ivar int n_unconverged_steps: steps of this run whose solve left rows
        unconverged; one ``ConvergenceWarning`` at the end summarises them.
    """

    losses: list = field(default_factory=list)
    seconds: float = 0.0
    n_steps: int = 0
    resumed_from: int = 0
    n_unconverged_steps: int = 0


def train(
    model,
    guide,
    y,
    *,
    mask=None,
    offset=None,
    num_steps: int = 300,
    learning_rate: float = 0.05,
    batch_size: int | None = None,
    progress: bool = False,
    description: str = "training",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
) -> TrainingResult:
    """Fit ``model`` and ``guide`` by SVI with ``Trace_ELBO`` and clipped Adam.

    With ``checkpoint``, the state of the run is saved to that file every
    ``checkpoint_every`` steps and after the last step: the Pyro parameter
    store (model and guide parameters), the optimizer's moments, the random
    number generators of torch, NumPy and Python, and the losses so far. Each
    save writes a temporary file in the same directory and renames it over the
    old one, so an interrupted save leaves the previous checkpoint intact. If
    the file already exists when ``train`` starts, the run resumes from it, and
    on the same machine the result equals that of an uninterrupted run bit for
    bit. Build the model and guide as for the first run before resuming.

    Example::

        train(model, guide, y, num_steps=500, checkpoint="fit.ckpt")   # interrupted at step 120
        train(model, guide, y, num_steps=500, checkpoint="fit.ckpt")   # continues at step 100

    :param y: observations, shape ``(N, d)``.
    :param int num_steps: optimisation steps in total, counting those of a resumed checkpoint.
    :param float learning_rate: Adam step size.
    :param int batch_size: minibatch size; ``None`` uses every row at each step.
    :param bool progress: show a progress bar (tqdm).
    :param checkpoint: path of the checkpoint file, or ``None`` for no checkpoints.
        The file is a pickle read with :func:`torch.load`, so resume only from files you wrote.
    :param int checkpoint_every: steps between two saves of ``checkpoint``.
    :returns: a :class:`TrainingResult`; losses are divided by the batch size.
    :raises NumericalError: when the loss becomes non-finite, with the step.
    :raises ValueError: for an invalid argument, or a checkpoint written with another
        ``learning_rate`` or ``batch_size``, or after more than ``num_steps`` steps.
    """
    if num_steps < 0:
        raise ValueError(f"`num_steps` must be >= 0, got {num_steps}.")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"`learning_rate` must be a finite positive number, got {learning_rate}.")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"`checkpoint_every` must be a positive integer, got {checkpoint_every!r}.")
    n_rows = y.shape[0]
    if batch_size is not None and batch_size >= n_rows:
        batch_size = None

    svi = SVI(model, guide, ClippedAdam({"lr": learning_rate, "clip_norm": 10.0}), Trace_ELBO())
    result = TrainingResult()
    settings = {"learning_rate": learning_rate, "batch_size": batch_size}
    kwargs = {"mask": mask, "offset": offset}
    if batch_size is not None:
        kwargs["subsample_size"] = batch_size
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.exists():
            _resume(checkpoint, svi, result, settings, num_steps, lambda: _synchronize(model, guide, y, kwargs))
    rows_per_step = batch_size or n_rows

    start = time.perf_counter()
    bar = tqdm(range(result.resumed_from, num_steps), desc=description, disable=not progress, leave=False)
    unconverged = _UnconvergedSteps()
    for step in bar:
        with unconverged.collect():
            loss = svi.step(y, **kwargs) / rows_per_step
        if not math.isfinite(loss):
            raise NumericalError(
                f"The loss became {loss} at step {step}; lower `learning_rate` or check the data "
                "for extreme values.",
                {"step": step, "losses": result.losses},
            )
        result.losses.append(loss)
        if step % 50 == 0:
            logger.debug("%s step %d loss %.4f", description, step, loss)
            bar.set_postfix(loss=f"{loss:.4g}")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == num_steps):
            save_checkpoint(checkpoint, svi, step + 1, result.losses, settings)
    if checkpoint is not None and num_steps == result.resumed_from:
        save_checkpoint(checkpoint, svi, num_steps, result.losses, settings)
    result.seconds = time.perf_counter() - start
    result.n_steps = num_steps
    result.n_unconverged_steps = unconverged.count
    unconverged.report(num_steps - result.resumed_from)
    logger.info("%s: %d steps in %.1f s, final loss %.4f", description, num_steps, result.seconds,
                result.losses[-1] if result.losses else float("nan"))
    return result


class _UnconvergedSteps:
    """Count the training steps whose solve left rows unconverged, and warn once at the end.

    A solve that stops short warns at every SVI step, which would bury the
    progress bar and any other message under hundreds of identical lines.
    Other warnings pass through unchanged.
    """

    def __init__(self):
        self.count = 0
        self.last_message = ""

    @contextlib.contextmanager
    def collect(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                self.count += 1
                self.last_message = str(warning.message)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    def report(self, n_steps: int) -> None:
        if self.count:
            warn_at_caller(
                f"In {self.count} of {n_steps} training steps the fixed-point solve left rows "
                f"unconverged; the last: {self.last_message}",
                ConvergenceWarning,
            )


def save_checkpoint(path: Path, svi: SVI, step: int, losses: list, settings: dict) -> None:
    """Write the state of a training run to ``path`` atomically (temporary file, then rename)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "losses": list(losses),
        "settings": dict(settings),
        "param_store": pyro.get_param_store().get_state(),
        "optimizer": svi.optim.get_state(),
        "rng": pyro.util.get_rng_state(),
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.absolute().parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.debug("saved checkpoint %s at step %d", path, step)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`train`.

    :returns: a dict with ``step``, ``losses``, ``settings`` (``learning_rate``,
        ``batch_size``), ``param_store`` (as :meth:`pyro.get_param_store().get_state`
        returns it), ``optimizer`` and ``rng``.
    :raises ValueError: if the file is not a checkpoint of this layout.
    """
    # weights_only=False because the state holds Pyro constraint objects and
    # Python's random state; the file must come from a trusted run.
    state = torch.load(path, weights_only=False)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is not a pyro_deq training checkpoint of version {CHECKPOINT_VERSION}; "
            "delete it or pass another `checkpoint` path."
        )
    return state


def _synchronize(model, guide, y, kwargs: dict) -> None:
    """Run the model and guide once so that they read the restored parameter store.

    A :class:`~pyro.nn.PyroModule` copies a parameter from the store only when
    it runs, and the DEQ guides read the model's parameters directly, so
    without this run the first resumed step would solve with the initial
    loadings. The run also does an autoguide's one-time setup, which a fresh
    run does inside its first step. Both draw random numbers, so they happen
    before the generators are restored.
    """
    with poutine.block():
        poutine.trace(model).get_trace(y, **kwargs)
        poutine.trace(guide).get_trace(y, **kwargs)


def _resume(path: Path, svi: SVI, result: TrainingResult, settings: dict, num_steps: int, synchronize) -> None:
    """Restore the parameters, optimizer, generators and losses of ``svi`` from ``path``."""
    state = load_checkpoint(path)
    if state["settings"] != settings:
        raise ValueError(
            f"the checkpoint {path} was written with {state['settings']}, but this run has {settings}; "
            "pass the same `learning_rate` and `batch_size`, or another `checkpoint` path."
        )
    if state["step"] > num_steps:
        raise ValueError(
            f"the checkpoint {path} is at step {state['step']}, past `num_steps`={num_steps}; "
            f"pass num_steps >= {state['step']}."
        )
    pyro.get_param_store().set_state(state["param_store"])
    synchronize()
    svi.optim.set_state(state["optimizer"])
    pyro.util.set_rng_state(state["rng"])
    result.losses = list(state["losses"])
    result.resumed_from = state["step"]
    logger.info("resumed from checkpoint %s at step %d", path, state["step"])
