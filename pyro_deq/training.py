"""Training loops: SVI over the data with progress reporting."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from .errors import NumericalError

__all__ = ["TrainingResult", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """Outcome of :func:`train`.

    :ivar list losses: the loss (negative ELBO per row) at each step.
    :ivar float seconds: wall time.
    :ivar int n_steps: steps taken.
    """

    losses: list = field(default_factory=list)
    seconds: float = 0.0
    n_steps: int = 0


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
) -> TrainingResult:
    """Fit ``model`` and ``guide`` by SVI with ``Trace_ELBO`` and clipped Adam.

    :param y: observations, shape ``(N, d)``.
    :param int num_steps: optimisation steps.
    :param float learning_rate: Adam step size.
    :param int batch_size: minibatch size; ``None`` uses every row at each step.
    :param bool progress: show a progress bar (tqdm).
    :returns: a :class:`TrainingResult`; losses are divided by the batch size.
    :raises NumericalError: when the loss becomes non-finite, with the step.
    """
    if num_steps < 0:
        raise ValueError(f"`num_steps` must be >= 0, got {num_steps}.")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"`learning_rate` must be a finite positive number, got {learning_rate}.")
    n_rows = y.shape[0]
    if batch_size is not None and batch_size >= n_rows:
        batch_size = None

    svi = SVI(model, guide, ClippedAdam({"lr": learning_rate, "clip_norm": 10.0}), Trace_ELBO())
    result = TrainingResult()
    kwargs = {"mask": mask, "offset": offset}
    if batch_size is not None:
        kwargs["subsample_size"] = batch_size
    rows_per_step = batch_size or n_rows

    start = time.perf_counter()
    bar = tqdm(range(num_steps), desc=description, disable=not progress, leave=False)
    for step in bar:
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
    result.seconds = time.perf_counter() - start
    result.n_steps = num_steps
    logger.info("%s: %d steps in %.1f s, final loss %.4f", description, num_steps, result.seconds,
                result.losses[-1] if result.losses else float("nan"))
    return result
