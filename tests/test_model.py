"""MFModel: compatibility with the seed project's model and training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchmf import Interactions, MFModel


def test_seed_training_loop_reduces_loss(seed_ratings):
    # The seed project's code, verbatim apart from the data plumbing.
    data = Interactions.from_dict(seed_ratings)
    num_users, num_items, embedding_dim = data.n_users, data.n_items, 10
    user_tensor = torch.as_tensor(data.users)
    item_tensor = torch.as_tensor(data.items)
    rating_tensor = torch.as_tensor(data.values)

    torch.manual_seed(0)
    model = MFModel(num_users, num_items, embedding_dim)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        prediction = model(user_tensor, item_tensor)
        loss = criterion(prediction, rating_tensor)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    # gradient descent with a small step on a smooth loss: must go down overall
    assert losses[-1] < 0.5 * losses[0]


def test_seed_model_has_only_the_two_embeddings():
    model = MFModel(5, 7, 3)
    # the seed's state_dict keys, so seed checkpoints still load
    assert set(model.state_dict()) == {"user_embs.weight", "item_embs.weight"}
    assert model.num_users == 5 and model.num_items == 7 and model.embedding_dim == 3
    assert not model.biases


def test_default_init_is_embedding_default_normal():
    # nn.Embedding initialises N(0, 1); MFModel must draw exactly the same numbers
    torch.manual_seed(123)
    model = MFModel(50, 40, 8)
    torch.manual_seed(123)
    ref_u = nn.Embedding(50, 8)
    ref_i = nn.Embedding(40, 8)
    torch.testing.assert_close(model.user_embs.weight, ref_u.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.item_embs.weight, ref_i.weight, rtol=0, atol=0)


def test_default_init_statistics():
    torch.manual_seed(0)
    w = MFModel(2000, 10, 64).user_embs.weight.detach()
    # 128,000 N(0,1) draws: the sample sd of the mean is 1/sqrt(128000) ~ 0.003
    assert abs(float(w.mean())) < 0.02
    assert abs(float(w.std()) - 1.0) < 0.02


def test_init_std_and_generator():
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    a = MFModel(300, 300, 16, init_std=0.1, generator=g1)
    b = MFModel(300, 300, 16, init_std=0.1, generator=g2)
    torch.testing.assert_close(a.user_embs.weight, b.user_embs.weight, rtol=0, atol=0)
    # 4800 N(0, 0.1) draws: sample sd within a few percent of 0.1
    assert abs(float(a.user_embs.weight.detach().std()) - 0.1) < 0.005


def _hand_model() -> MFModel:
    model = MFModel(2, 3, 2, biases=True)
    with torch.no_grad():
        model.user_embs.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
        model.item_embs.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 1.0], [-2.0, 4.0]]))
        model.user_bias.weight.copy_(torch.tensor([[0.25], [-0.5]]))
        model.item_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
        model.global_bias.fill_(3.0)
    return model


def test_biases_add_up():
    model = _hand_model()
    users = torch.tensor([0, 0, 1, 1])
    items = torch.tensor([0, 2, 1, 2])
    got = model(users, items)
    # by hand: global 3 + user bias + item bias + p_u . q_i
    #   (0,0): 3 + 0.25 + 0.1 + (1*3 + 2*0)        = 6.35
    #   (0,2): 3 + 0.25 + 0.3 + (1*-2 + 2*4)       = 9.55
    #   (1,1): 3 - 0.5  + 0.2 + (0.5*1 + -1*1)     = 2.2
    #   (1,2): 3 - 0.5  + 0.3 + (0.5*-2 + -1*4)    = -2.2
    torch.testing.assert_close(got, torch.tensor([6.35, 9.55, 2.2, -2.2]))


def test_bias_tables_start_at_zero():
    model = MFModel(4, 5, 3, biases=True)
    assert float(model.global_bias.detach()) == 0.0
    assert float(model.user_bias.weight.detach().abs().sum()) == 0.0
    assert float(model.item_bias.weight.detach().abs().sum()) == 0.0


@pytest.mark.parametrize("with_biases", [False, True])
def test_score_all_equals_forward_on_all_pairs(with_biases):
    torch.manual_seed(0)
    model = _hand_model() if with_biases else MFModel(4, 6, 3)
    users = torch.arange(model.num_users)
    grid_u = users.repeat_interleave(model.num_items)
    grid_i = torch.arange(model.num_items).repeat(model.num_users)
    with torch.no_grad():
        expected = model(grid_u, grid_i).reshape(model.num_users, model.num_items)
        torch.testing.assert_close(model.score_all(users), expected)
        # a candidate subset gives the same columns
        cand = torch.tensor([model.num_items - 1, 0])
        torch.testing.assert_close(model.score_all(users, cand), expected[:, cand])
        # a subset of users, repeated, gives the same rows
        some = torch.tensor([1, 0, 1])
        torch.testing.assert_close(model.score_all(some), expected[some])


def test_resize_keeps_old_rows_and_adds_zero_rows():
    model = _hand_model()
    before = model.user_embs.weight.detach().clone()
    model.resize(4)
    assert model.num_users == 4
    torch.testing.assert_close(model.user_embs.weight[:2].detach(), before)
    assert float(model.user_embs.weight[2:].detach().abs().sum()) == 0.0
    assert model.user_bias.weight.shape == (4, 1)
    # a new zero user scores global + item bias
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([3]), torch.tensor([1])), torch.tensor([3.2]))
