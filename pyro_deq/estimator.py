"""DEQPCA: exponential-family PCA as a scikit-learn transformer.

The estimator trains an :class:`~pyro_deq.ExpFamPCA` with an
:class:`~pyro_deq.AutoDEQ` guide (or :class:`~pyro_deq.AutoDEQLaplace` for the
Laplace objective) and keeps the learned loadings and bias as NumPy arrays, so
a fitted estimator pickles, clones and transforms new data without touching the
caller's Pyro parameter store.

scikit-learn is an optional dependency (the ``data`` extra). Without it this
module still imports, and building a :class:`DEQPCA` raises ``ImportError``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, init_to_value

from . import families
from .guides import AutoDEQ, AutoDEQGuideList, AutoDEQLaplace
from .initialization import initial_bias, initial_weight
from .models import ExpFamPCA
from .training import train

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils import check_array, check_random_state
    from sklearn.utils.validation import check_is_fitted
except ImportError as error:
    _SKLEARN_IMPORT_ERROR: ImportError | None = error
    # Distinct empty bases, so that the class statement below still runs.
    BaseEstimator = type("BaseEstimator", (), {})
    ClassNamePrefixFeaturesOutMixin = type("ClassNamePrefixFeaturesOutMixin", (), {})
    TransformerMixin = type("TransformerMixin", (), {})
else:
    _SKLEARN_IMPORT_ERROR = None

try:
    from sklearn.utils.validation import validate_data
except ImportError:
    # scikit-learn before 1.6 has the same check as a private method.
    # NOTE: the tests run scikit-learn 1.9, so this fallback is not exercised.
    def validate_data(estimator, X="no_validation", **kwargs):
        return estimator._validate_data(X, **kwargs)


__all__ = ["DEQPCA"]

OBJECTIVES = ("map", "laplace")

# Families whose data lie in [0, ∞); scikit-learn's checks then feed them
# non-negative data only.
_NON_NEGATIVE_FAMILIES = ("bernoulli", "binomial", "continuous_bernoulli", "poisson")


class DEQPCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Exponential-family PCA whose latents are the exact per-row MAP.

    The model, for each row ``y_n`` of ``X``, is

    .. math::

        z_n \sim \mathcal{N}(0, \lambda^{-1} I_k), \qquad
        y_{nj} \sim \text{family}(\eta_{nj}), \qquad
        \eta_n = R(W z_n + b).

    :meth:`fit` learns ``W`` and ``b`` by stochastic variational inference with
    the :class:`~pyro_deq.AutoDEQ` guide, and :meth:`transform` returns the MAP
    ``z*_n`` of each row, found by a fixed-point solve with the learned
    parameters. Rows are independent, so transforming a subset of rows gives
    the same latents as transforming all of them.

    Parameters
    ----------
    n_components : int, default=2
        Number of latent components ``k``.
    family : str or ExponentialFamily, default="gaussian"
        A registry name of :mod:`pyro_deq.families` (``"gaussian"``,
        ``"bernoulli"``, ``"poisson"``, ``"continuous_bernoulli"``) or a family
        object such as ``families.get("binomial", total_count=16)``.
    nonlinearity : str, default="identity"
        The canonical nonlinearity ``R``: ``"identity"`` or ``"relu"``.
    prior_precision : float, default=1.0
        Precision ``λ`` of the Gaussian prior on the latents.
    weight_decay : float or None, default=None
        Precision ``τ`` of a Gaussian prior on each loading. The loadings are
        then the MAP under that prior; ``None`` leaves them unpenalised.
    max_epochs : int, default=200
        Passes over the data. With ``batch_size=None`` an epoch is one
        optimisation step on all rows.
    batch_size : int or None, default=None
        Rows per optimisation step; ``None`` uses every row.
    learning_rate : float, default=0.05
        Step size of the clipped Adam optimiser.
    objective : {"map", "laplace"}, default="map"
        ``"map"`` maximises the joint density at the latents' MAP;
        ``"laplace"`` maximises the Laplace approximation of the marginal
        likelihood, which does not inflate the loadings as the joint MAP does.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial loadings and the minibatch order. Torch's global
        generator is restored after :meth:`fit`.
    device : str or None, default=None
        Torch device of the computation, for example ``"cuda"``; ``None`` is
        the CPU. Results are always NumPy arrays.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The loadings ``Wᵀ``. They are identified only up to a rotation of
        the latent space.
    bias_ : ndarray of shape (n_features,)
        The bias ``b``.
    family_ : ExponentialFamily
        The family object built from ``family``.
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Mean loss (negative ELBO per row) of each epoch.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Column names, set only when ``X`` has string column names.

    Notes
    -----
    Sparse input (any SciPy sparse matrix or array) is converted to a dense
    array once per call, so memory grows as ``n_samples × n_features``.
    Computations run in float64.

    Examples
    --------
    >>> from pyro_deq import DEQPCA, datasets, families
    >>> digits = datasets.load_digits()
    >>> family = families.get("binomial", total_count=16)
    >>> estimator = DEQPCA(n_components=2, family=family, max_epochs=100)
    >>> Z = estimator.fit_transform(digits.data.numpy())   # (1797, 2)
    """

    def __init__(
        self,
        n_components=2,
        *,
        family="gaussian",
        nonlinearity="identity",
        prior_precision=1.0,
        weight_decay=None,
        max_epochs=200,
        batch_size=None,
        learning_rate=0.05,
        objective="map",
        random_state=None,
        device=None,
    ):
        if _SKLEARN_IMPORT_ERROR is not None:
            raise ImportError(
                "DEQPCA needs scikit-learn; install it with pip install 'pyro-deq[data]'."
            ) from _SKLEARN_IMPORT_ERROR
        self.n_components = n_components
        self.family = family
        self.nonlinearity = nonlinearity
        self.prior_precision = prior_precision
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.objective = objective
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64"]
        name = getattr(self.family, "name", self.family)
        tags.input_tags.positive_only = name in _NON_NEGATIVE_FAMILIES
        return tags

    # ------------------------------------------------------------ checks

    def _check_hyperparameters(self) -> None:
        """Raise ``ValueError`` for a hyper-parameter outside its range."""
        _check_integer(self.n_components, "n_components")
        _check_integer(self.max_epochs, "max_epochs")
        if self.batch_size is not None:
            _check_integer(self.batch_size, "batch_size")
        _check_positive(self.prior_precision, "prior_precision")
        _check_positive(self.learning_rate, "learning_rate")
        if self.weight_decay is not None:
            _check_positive(self.weight_decay, "weight_decay")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}.")

    def _device(self) -> torch.device:
        return torch.device("cpu" if self.device is None else self.device)

    def _validate_X(self, X, reset: bool) -> torch.Tensor:
        """Check ``X`` as scikit-learn does, then against the family's support.

        :returns: a float64 tensor of shape ``(n_samples, n_features)`` on the device.
        """
        X = validate_data(self, X, accept_sparse=("csr", "csc", "coo"), dtype=np.float64, reset=reset)
        if hasattr(X, "toarray"):
            X = X.toarray()
        # torch.tensor copies, so read-only inputs (memory maps) are accepted
        # and the caller's array is never written.
        tensor = torch.tensor(X, dtype=torch.float64, device=self._device())
        family = families.get(self.family) if reset else self.family_
        family.validate(tensor, name="X")
        return tensor

    # ------------------------------------------------------------ fitting

    def fit(self, X, y=None):
        """Learn the loadings and bias from ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data in the support of the family.
        y : None
            Ignored.

        Returns
        -------
        self : DEQPCA
            The fitted estimator.

        Raises
        ------
        ValueError
            For an invalid hyper-parameter, or data outside the family's
            support; the message names the family and the fix.
        """
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit to ``X`` and return the MAP latents of its rows, shape ``(n_samples, n_components)``."""
        data = self._fit(X)
        return self._latents(data)

    def _fit(self, X) -> torch.Tensor:
        self._check_hyperparameters()
        family = families.get(self.family)
        # families.get rejects unknown names and objects, before the data are checked.
        self.family_ = family
        data = self._validate_X(X, reset=True)
        n_rows = data.shape[0]

        batch_size = None if self.batch_size is None or self.batch_size >= n_rows else self.batch_size
        steps_per_epoch = 1 if batch_size is None else math.ceil(n_rows / batch_size)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        with _forked_torch_rng(self._device()), pyro.get_param_store().scope():
            torch.manual_seed(seed)
            model = ExpFamPCA(
                data.shape[1], self.n_components, family=family, nonlinearity=self.nonlinearity,
                prior_precision=self.prior_precision, weight_decay=self.weight_decay,
                weight=initial_weight(family, data, self.n_components), bias=initial_bias(family, data),
            ).to(self._device())
            guide = self._guide(model)
            result = train(
                model, guide, data, num_steps=self.max_epochs * steps_per_epoch,
                learning_rate=self.learning_rate, batch_size=batch_size,
                description="DEQPCA",
            )
            weight = guide.median(data)["weight"] if self.weight_decay is not None else model.weight

        self.components_ = weight.detach().T.cpu().numpy().copy()
        self.bias_ = model.bias.detach().cpu().numpy().copy()
        self.n_iter_ = self.max_epochs
        losses = np.asarray(result.losses, dtype=np.float64).reshape(self.max_epochs, steps_per_epoch)
        self.loss_curve_ = losses.mean(axis=1).tolist()
        return data

    def _guide(self, model: ExpFamPCA):
        """Build the guide: the DEQ guide for ``z``, plus a Delta for the loadings under weight decay."""
        if self.objective == "laplace":
            local = AutoDEQLaplace(model, objective="laplace")
        else:
            local = AutoDEQ(model)
        if self.weight_decay is None:
            return local
        guide = AutoDEQGuideList(model)
        start = init_to_value(values={"weight": model.initial_weight})
        guide.append(AutoDelta(poutine.block(model, expose=["weight"]), init_loc_fn=start))
        guide.append(local)
        return guide

    # ---------------------------------------------------- fitted model use

    def _fitted_model(self) -> ExpFamPCA:
        """Rebuild the model with the learned parameters as plain parameters."""
        device = self._device()
        weight = torch.tensor(self.components_.T, dtype=torch.float64, device=device)
        bias = torch.tensor(self.bias_, dtype=torch.float64, device=device)
        return ExpFamPCA(
            weight.shape[0], weight.shape[1], family=self.family_, nonlinearity=self.nonlinearity,
            prior_precision=self.prior_precision, weight=weight, bias=bias,
        ).to(device)

    def _latents(self, data: torch.Tensor) -> np.ndarray:
        with pyro.get_param_store().scope():
            z = AutoDEQ(self._fitted_model()).median(data)["z"]
        return z.cpu().numpy()

    def transform(self, X):
        """Return the MAP latents of the rows of ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data in the support of the family.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
            ``z*_n = argmax_z log p(y_n, z | W, b)`` per row.
        """
        check_is_fitted(self)
        return self._latents(self._validate_X(X, reset=False))

    def inverse_transform(self, X):
        """Map latents to the expected data ``E[y | z] = A′(R(Wz + b))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latents, for example the output of :meth:`transform`.

        Returns
        -------
        X_mean : ndarray of shape (n_samples, n_features)
            The mean of each entry under the family.
        """
        check_is_fitted(self)
        Z = _check_latents(X, self.n_components)
        z = torch.tensor(Z, dtype=torch.float64, device=self._device())
        with torch.no_grad(), pyro.get_param_store().scope():
            mean = self._fitted_model().expected_value(z)
        return mean.cpu().numpy()

    def predict_mean(self, X):
        """Return the expected data at the MAP latents of each row, shape ``(n_samples, n_features)``.

        It equals ``inverse_transform(transform(X))``: a denoised
        reconstruction of ``X`` in the scale of the data.
        """
        return self.inverse_transform(self.transform(X))

    def score_samples(self, X):
        r"""Return the Laplace approximation of the log-likelihood of each row.

        .. math:: \log p(y_n \mid W, b) \approx \log p(y_n, z^*_n \mid W, b)
                  + \tfrac{k}{2}\log 2\pi - \tfrac12 \log\det H_n,

        with ``H_n`` the posterior precision of ``z`` at the MAP. The latents
        are integrated out whatever the training ``objective``; the result is
        exact for the Gaussian family with the identity nonlinearity.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_likelihood : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        data = self._validate_X(X, reset=False)
        with pyro.get_param_store().scope():
            log_marginal = AutoDEQLaplace(self._fitted_model()).log_marginal(data)
        return log_marginal.cpu().numpy()

    def score(self, X, y=None):
        """Return the mean of :meth:`score_samples` over the rows of ``X``."""
        return float(np.mean(self.score_samples(X)))

    def deviance(self, X):
        r"""Return the deviance of each row at its MAP latents.

        .. math:: D_n = 2 \sum_j \left[\log p(y_{nj} \mid \text{saturated})
                  - \log p(y_{nj} \mid \eta^*_{nj})\right]
                  = 2 \sum_j \left[A^*(T(y_{nj})) - T(y_{nj})\,\eta^*_{nj} + A(\eta^*_{nj})\right],

        where ``A*`` is the convex conjugate of the log-partition and
        ``η* = R(W z* + b)``. For the Gaussian family of scale ``s`` it is the
        squared error over ``s²``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        deviance : ndarray of shape (n_samples,)
            Non-negative.

        Raises
        ------
        NotImplementedError
            For a family without a closed-form conjugate log-partition (the
            continuous Bernoulli and families outside the registry).
        """
        check_is_fitted(self)
        data = self._validate_X(X, reset=False)
        with pyro.get_param_store().scope():
            model = self._fitted_model()
            z = AutoDEQ(model).median(data)["z"]
            with torch.no_grad():
                problem = model.problem(data)
                _, eta = problem.canonical_parameter(z)
                statistic = problem.statistic
                conjugate = _conjugate_log_partition(self.family_, statistic, data)
                unit = conjugate - statistic * eta + self.family_.log_partition(eta)
        # Rounding can leave exact fits a few ulps below zero.
        return (2.0 * unit.sum(-1)).clamp(min=0.0).cpu().numpy()

    @property
    def _n_features_out(self) -> int:
        """Number of output features, which ``get_feature_names_out`` needs."""
        return self.components_.shape[0]


def _conjugate_log_partition(family, statistic: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Compute ``A*(t) = sup_η (t η − A(η))`` entrywise, including its limits on the boundary."""
    name = getattr(family, "name", None)
    t = statistic
    if name == "gaussian":
        return 0.5 * family.scale**2 * t * t
    if name == "bernoulli":
        return torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)
    if name == "poisson":
        return torch.xlogy(t, t) - t
    if name == "binomial":
        n = torch.as_tensor(family.total_count, dtype=y.dtype, device=y.device)
        return torch.xlogy(t, t) + torch.xlogy(n - t, n - t) - torch.xlogy(n, n)
    raise NotImplementedError(
        f"DEQPCA.deviance has no closed form for the family {name or family!r}; it supports "
        "'gaussian', 'bernoulli', 'binomial' and 'poisson'. Use score_samples for a likelihood instead."
    )


def _forked_torch_rng(device: torch.device):
    """Return a context that restores torch's generators on exit, so seeding inside leaves the caller's intact."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type="cuda")


def _check_integer(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")


def _check_latents(Z, n_components: int) -> np.ndarray:
    """Return latents as a finite float64 array of shape ``(n_samples, n_components)``."""
    Z = check_array(Z, dtype=np.float64)
    if Z.shape[1] != n_components:
        raise ValueError(
            f"`X` has {Z.shape[1]} columns but DEQPCA has n_components={n_components}; "
            "pass latents such as the output of transform."
        )
    return Z
