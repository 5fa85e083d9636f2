"""Many features: a 20 x 20000 sparse binary matrix with k = 2 trains without any p x p tensor."""

import numpy as np
import pyro
import scipy.sparse
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pyro_deq
from pyro_deq.training import train

N_ROWS, N_FEATURES, N_COMPONENTS = 20, 20000, 2


class LargestTensor(TorchDispatchMode):
    """Record the largest number of elements of any tensor that a torch operation returns."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for value in torch.utils._pytree.tree_leaves(output):
            if isinstance(value, torch.Tensor):
                self.max_numel = max(self.max_numel, value.numel())
        return output


def test_wide_sparse_binary_trains_in_linear_memory():
    matrix = scipy.sparse.random(N_ROWS, N_FEATURES, density=0.01, format="csr", random_state=0)
    y = torch.as_tensor((matrix.toarray() > 0).astype(np.float32))
    pyro.set_rng_seed(0)
    model = pyro_deq.ExpFamPCA(N_FEATURES, N_COMPONENTS, family="bernoulli")
    guide = pyro_deq.AutoDEQ(model)

    largest = LargestTensor()
    with largest:
        result = train(model, guide, y, num_steps=3)
        z = guide.median(y)["z"]

    assert all(np.isfinite(result.losses))
    assert z.shape == (N_ROWS, N_COMPONENTS)
    shapes = {name: tuple(value.shape) for name, value in pyro.get_param_store().items()}
    assert shapes == {"weight": (N_FEATURES, N_COMPONENTS), "bias": (N_FEATURES,)}
    assert guide.diagnostics["result"].z.shape == (N_ROWS, N_COMPONENTS)
    # Every operation of training and solving, backward passes included,
    # returns at most n * p * k elements. A p x p matrix would have 4e8.
    assert largest.max_numel <= N_ROWS * N_FEATURES * N_COMPONENTS
