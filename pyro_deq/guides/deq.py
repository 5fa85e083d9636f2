"""AutoDEQ: an amortized Delta guide at the exact per-row MAP of the local latents."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoGuide

from ..errors import warn_at_caller
from ..models import ExpFamPCAProblem
from ..solvers import attach_gradient, report_failure, solve
from .adapters import make_adapter

__all__ = ["AutoDEQ", "GRADIENTS"]

GRADIENTS = ("envelope", "implicit")


class AutoDEQ(AutoGuide):
    r"""Delta guide at the MAP of each row's latents, found by a fixed-point solve.

    A drop-in for :class:`~pyro.infer.autoguide.AutoDelta` on the local latents
    of the plate ``"data"``. Each call solves the stationarity condition
    ``z = f(z; y)`` of every row in the batch, so the estimate is the exact
    MAP given the current parameters: it is amortized over rows (new rows need
    no training) with no amortization gap.

    Example::

        model = pyro_deq.ExpFamPCA(64, 2, family="bernoulli")
        guide = pyro_deq.AutoDEQ(model)
        svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
        for step in range(200):
            svi.step(y)
        z_map = guide.median(y)["z"]         # (N, k)

    Gradients for the model's parameters: with ``gradient="envelope"`` the
    MAP is detached. At an exact fixed point the envelope theorem makes
    ``d/dθ ℓ(z*(θ); θ) = ∂ℓ/∂θ |_{z = z*}``, so the ELBO gradient is exact. With
    ``gradient="implicit"`` the MAP carries ``dz*/dθ = -(∂r/∂z)⁻¹ ∂r/∂θ``, which
    any other loss of ``z*`` needs (only for :class:`~pyro_deq.ExpFamPCA`).

    :param callable model: an :class:`~pyro_deq.ExpFamPCA`, a
        :class:`~pyro_deq.DeepExpFamPCA`, or any Pyro model whose local latent
        ``latent`` of shape ``(batch, k)`` sits in the plate ``plate`` with a
        continuous prior on all of ``ℝ^k``.
    :param str latent: name of the local latent site (generic models).
    :param str plate: name of the data plate (generic models).
    :param str method: solver, ``"newton"`` (default), ``"anderson"`` or ``"picard"``.
    :param float tol: relative residual tolerance; ``None`` derives it from the dtype.
    :param int max_iter: solver iteration limit; ``None`` uses the solver's default.
    :param str gradient: ``"envelope"`` or ``"implicit"``.
    :param dict solver_options: further options passed to :func:`pyro_deq.solve`.

    In float32, the rows of an :class:`~pyro_deq.ExpFamPCA` that the solve
    leaves above the tolerance, where large counts or loadings make the
    residual's rounding noise exceed it, are solved again in float64 from
    their last iterate. ``diagnostics["result"].stats["n_refined_float64"]``
    counts them.

    :ivar dict diagnostics: of the last solve: ``n_iter``, ``max_residual``,
        ``fraction_converged``, ``status`` and the full ``result``.
    """

    def __init__(
        self,
        model,
        *,
        latent: str = "z",
        plate: str = "data",
        method: str | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        gradient: str = "envelope",
        solver_options: dict | None = None,
    ):
        if gradient not in GRADIENTS:
            raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {gradient!r}.")
        super().__init__(model)
        self._adapter = (make_adapter(model, latent, plate),)
        if gradient == "implicit" and not self.adapter.closed_form:
            raise NotImplementedError(
                "gradient='implicit' is available for ExpFamPCA models; generic models use 'envelope'."
            )
        self.method = method
        self.tol = tol
        self.max_iter = max_iter
        self.gradient = gradient
        self.solver_options = dict(solver_options or {})
        self.diagnostics: dict = {}
        self.global_values: dict | None = None

    @property
    def adapter(self):
        return self._adapter[0]

    def __getstate__(self):
        # Pyro's AutoGuide drops its reference to the model when pickled, but
        # every call of this guide runs the model's closed forms or the model
        # itself, so the adapter, which holds the model, is pickled with it.
        # AutoGuide.__getstate__ also clears the live guide's model and master
        # references; they are put back so that pickling leaves it usable.
        model, master = self._model, self.master
        state = dict(super().__getstate__())
        self._model, self.master = model, master
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._model = (self.adapter.model,)

    # ----------------------------------------------------------- solving

    def _solve_rows(self, problem, n_rows: int, size: int, dtype, device) -> torch.Tensor:
        z0 = torch.zeros(n_rows, size, dtype=dtype, device=device)
        options = dict(self.solver_options)
        throw = options.pop("throw", False)
        result = solve(problem, z0, method=self.method, tol=self.tol, max_iter=self.max_iter, warn=False, **options)
        if dtype != torch.float64 and isinstance(problem, ExpFamPCAProblem):
            # Rows that Newton's step-size test ended count as converged with a
            # residual above the tolerance, and an ill-conditioned float32
            # Hessian can end them short of the fixed point.
            unfinished = ~result.converged | (result.residual > result.tol)
            if bool(unfinished.any()):
                self._refine_in_float64(problem, result, unfinished, options)
        if not bool(result.converged.all()):
            report_failure(result, throw)

        self.diagnostics = {
            "n_iter": result.n_iter,
            "max_residual": float(result.residual.max()) if result.residual.numel() else 0.0,
            "fraction_converged": float(result.converged.float().mean()) if result.converged.numel() else 1.0,
            "status": result.status,
            "result": result,
        }
        return result.z

    def _refine_in_float64(self, problem, result, unfinished: torch.Tensor, options: dict) -> None:
        """Re-solve in float64 the rows ``unfinished`` that the lower-precision solve left above the tolerance.

        With large counts or loadings, the rounding noise of a float32 residual
        can exceed the tolerance, so those rows can never converge in float32.
        They restart in float64 from their last iterate, against the same
        tolerance, and ``result`` is updated in place.
        """
        rows = torch.nonzero(unfinished).flatten()
        refined = solve(
            problem.rows(rows).to(torch.float64), result.z[rows].double(), method=self.method,
            tol=result.tol, max_iter=self.max_iter, warn=False, **options,
        )
        result.z[rows] = refined.z.to(result.z.dtype)
        result.residual[rows] = refined.residual.to(result.residual.dtype)
        result.converged[rows] = refined.converged
        result.row_status[rows] = refined.row_status
        result.stats["n_refined_float64"] = int(rows.numel())
        result.stats["n_iter_float64"] = refined.n_iter

    def _map(self, args, kwargs, globals_=None, gradient: str | None = None):
        """Solve for the MAP of the rows of this call.

        :returns: ``(z, batch, state, problem)`` with ``z`` of shape ``(*draws, B, K)``.
        """
        adapter = self.adapter
        state = adapter.data(args, kwargs)
        batch = adapter.row_batch(args, kwargs, state)
        batch_state = adapter.batch_data(state, batch)
        gradient = gradient or self.gradient
        globals_ = adapter.canonical_globals(globals_)

        draws = self._split_global_draws(globals_)
        solutions, problems = [], []
        for draw in draws:
            problem = adapter.problem(batch_state, args, kwargs, globals_=draw)
            z = self._solve_draw(problem, batch, draw, batch_state, gradient)
            solutions.append(z)
            problems.append(problem)
        if len(draws) == 1 and not _has_draw_dims(globals_):
            return solutions[0], batch, batch_state, problems[0]
        lead = _draw_shape(globals_)
        z = torch.stack(solutions).reshape(*lead, *solutions[0].shape)
        return z, batch, batch_state, problems

    def _solve_draw(self, problem, batch, draw, batch_state, gradient):
        size = sum(self.adapter.latent_sizes)
        n_rows = int(batch.rows.numel())
        params = self.adapter.parameters(draw)
        # Generic models expose no parameters; their latent's dtype comes from
        # the hidden run of the model.
        dtype = params[0].dtype if params else self.adapter.latent_dtype
        device = batch.rows.device
        z = self._solve_rows(problem, n_rows, size, dtype, device)
        if gradient == "envelope" or not torch.is_grad_enabled():
            return z.detach()
        residual_fn = self.adapter.residual_fn(batch_state)
        jacobian = problem.evaluate(z, jacobian=True).jacobian.detach()
        return attach_gradient("implicit", residual_fn, z, params, jacobian=jacobian)

    def _summary_map(self, args, kwargs):
        """Solve for ``median``, ``get_posterior`` and ``log_marginal``, which report every row.

        A generic model whose plate subsamples on its own gives only the rows
        it chose. The warning reports that, and ``diagnostics["rows"]`` lists them.
        """
        z, batch, state, problem = self._map(args, kwargs, self.global_values, gradient="envelope")
        self.diagnostics["rows"] = batch.rows.tolist()
        if not self.adapter.closed_form and batch.rows.numel() < batch.n_total:
            warn_at_caller(
                f"The model's plate {self.adapter.plate!r} subsampled {batch.rows.numel()} of "
                f"{batch.n_total} rows, so only their latents are returned (their indices are in "
                "guide.diagnostics['rows']). Make subsample_size an argument of the model and "
                "leave it out here to get every row.",
                UserWarning,
            )
        return z, batch, state, problem

    def _split_global_draws(self, globals_):
        """Split global values with leading draw dimensions into one dict per draw."""
        if not _has_draw_dims(globals_):
            return [globals_]
        weight = globals_["weight"]
        flat = weight.reshape(-1, *weight.shape[-2:])
        return [dict(globals_, weight=flat[i]) for i in range(flat.shape[0])]

    # ---------------------------------------------------- Pyro interface

    def _sample_latents(self, z, batch, log_density=None):
        values = {}
        with pyro.plate(self.adapter.plate, batch.n_total, dim=self.adapter.plate_dim, subsample=batch.rows):
            for i, (name, value) in enumerate(self._split(z).items()):
                # The joint log-density goes on the first site only, so it counts once.
                density = 0.0 if (log_density is None or i > 0) else log_density
                values[name] = pyro.sample(name, dist.Delta(value, log_density=density, event_dim=1))
        return values

    def forward(self, *args, **kwargs):
        """Sample the latents of the rows of this call at their MAP.

        Takes the model's arguments. Returns a dict from latent site name to
        a tensor of shape ``(B, k)``.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        z, batch, _, _ = self._map(args, kwargs, self.global_values)
        return self._sample_latents(z, batch)

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict:
        """Return the MAP of every latent site, each of shape ``(N, k)``.

        Takes the model's arguments; the data ``y`` is required.
        """
        if not args and not kwargs:
            raise ValueError("AutoDEQ.median needs the model's arguments, for example guide.median(y).")
        z, _, _, _ = self._summary_map(args, kwargs)
        return self._split(z)

    def _split(self, z: torch.Tensor) -> dict:
        names = self.adapter.latent_names
        pieces = torch.split(z, self.adapter.latent_sizes, dim=-1) if len(names) > 1 else (z,)
        return dict(zip(names, pieces))

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict:
        """Return the MAP for every requested quantile, shape ``(len(quantiles), N, k)``.

        A point estimate has no spread, so every quantile equals the MAP, as
        for :class:`~pyro.infer.autoguide.AutoDelta`.
        """
        quantiles = torch.as_tensor(quantiles)
        medians = self.median(*args, **kwargs)
        return {name: value.expand(quantiles.numel(), *value.shape) for name, value in medians.items()}


def _has_draw_dims(globals_) -> bool:
    return bool(globals_) and "weight" in globals_ and globals_["weight"].dim() > 2


def _draw_shape(globals_) -> tuple:
    lead = tuple(globals_["weight"].shape[:-2])
    # The last leading dimension is the data plate's, of size 1 under
    # Predictive(parallel=True); the latents fill it with the rows.
    if lead and lead[-1] == 1:
        lead = lead[:-1]
    return lead
