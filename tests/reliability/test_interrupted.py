"""Interrupted and repeated work: checkpoints resume bit for bit, and saved models reload bit for bit."""

import pyro
import pytest
import torch

import pyro_deq
from pyro_deq.training import load_checkpoint, train


def binary_data():
    generator = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((30, 8), 0.4), generator=generator)


def build(seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = pyro_deq.ExpFamPCA(8, 2, family="bernoulli")
    return model, pyro_deq.AutoDEQ(model)


def parameters():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


@pytest.mark.parametrize("batch_size", [None, 10])
def test_resume_equals_uninterrupted_run(tmp_path, batch_size):
    y = binary_data()
    model, guide = build(1)
    uninterrupted = train(model, guide, y, num_steps=12, batch_size=batch_size)
    expected = parameters()

    checkpoint = tmp_path / "fit.ckpt"
    model, guide = build(1)
    train(model, guide, y, num_steps=5, batch_size=batch_size, checkpoint=checkpoint, checkpoint_every=2)
    assert load_checkpoint(checkpoint)["step"] == 5

    # A new process would build the model and guide again; another seed shows
    # that the checkpoint, not the seed, sets the state.
    model, guide = build(99)
    resumed = train(model, guide, y, num_steps=12, batch_size=batch_size, checkpoint=checkpoint)
    assert resumed.resumed_from == 5
    assert resumed.n_steps == 12
    assert resumed.losses == uninterrupted.losses
    for name, value in parameters().items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(guide.median(y)["z"], pyro_deq.AutoDEQ(model).median(y)["z"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fit.ckpt"]


def test_resume_rejects_other_settings(tmp_path):
    y = binary_data()
    model, guide = build(1)
    train(model, guide, y, num_steps=2, checkpoint=tmp_path / "fit.ckpt")
    with pytest.raises(ValueError, match="was written with .*'learning_rate': 0.05.* but this run has"):
        train(model, guide, y, num_steps=4, learning_rate=0.1, checkpoint=tmp_path / "fit.ckpt")
    with pytest.raises(ValueError, match="is at step 2, past `num_steps`=1"):
        train(model, guide, y, num_steps=1, checkpoint=tmp_path / "fit.ckpt")


def test_foreign_checkpoint_rejected(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a pyro_deq training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_saved_model_reloads_bit_identically(tmp_path):
    y = binary_data()
    model, guide = build(2)
    train(model, guide, y, num_steps=5)
    torch.save(model.state_dict(), tmp_path / "params.pt")
    z = guide.median(y)["z"]

    pyro.clear_param_store()
    reloaded = pyro_deq.ExpFamPCA(8, 2, family="bernoulli")
    reloaded.load_state_dict(torch.load(tmp_path / "params.pt"))
    assert torch.equal(reloaded.weight, model.weight)
    assert torch.equal(reloaded.bias, model.bias)
    assert torch.equal(pyro_deq.AutoDEQ(reloaded).median(y)["z"], z)
