"""Fixtures for the command-line tests: a small Reuters count matrix."""

import pytest
import torch

from pyro_deq.datasets import load_reuters

N_ROWS = 40
N_WORDS = 300


@pytest.fixture(scope="session")
def reuters_counts():
    """The first 40 stories over the 300 most frequent words: (counts int tensor, word names)."""
    dataset = load_reuters()
    counts = dataset.to_dense()
    top = torch.argsort(counts.sum(0), descending=True)[:N_WORDS]
    names = [dataset.feature_names[int(index)] for index in top]
    return counts[:N_ROWS, top].to(torch.int64), names
