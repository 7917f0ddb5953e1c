"""Loss terms against values worked out by hand on 2x2 feature maps."""
import pytest
import torch

from worker.engine.losses import ContentLoss, StyleLoss, TVLoss, gram


def features() -> torch.Tensor:
    # two channels over four positions: a = [1, 2, 3, 4], b = [0, 1, 0, 1]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])


def test_gram_is_channel_inner_products_over_positions():
    g = gram(features())
    # a.a = 30, a.b = 6, b.b = 2, each divided by 4 positions
    assert torch.allclose(g, torch.tensor([[[7.5, 1.5], [1.5, 0.5]]]))


def test_content_loss_is_relative_squared_error():
    target = features()
    loss = ContentLoss(target)
    assert loss(target).item() == 0
    # every element off by 1: 8 / (30 + 2)
    assert loss(target + 1).item() == pytest.approx(8 / 32)


def test_style_loss_is_squared_gram_error_relative_to_the_content_images():
    target = gram(features())
    doubled = features() * 2  # Gram x4, error = 3 * target: ||G(C) - A||^2 = 9 ||A||^2
    loss = StyleLoss(target, gram(doubled))
    assert loss(features()).item() == 0
    assert loss(doubled).item() == pytest.approx(1.0)  # the content image starts at 1
    # channel b zeroed: gram [[7.5, 0], [0, 0]]; error^2 = 2 * 1.5^2 + 0.5^2 = 4.75; ||A||^2 = 56.25 + 4.5 + 0.25
    zeroed = features().clone()
    zeroed[:, 1] = 0
    assert loss(zeroed).item() == pytest.approx(4.75 / (9 * 61.0))


def test_style_loss_of_a_content_that_already_has_the_style_stays_bounded():
    target = gram(features())
    loss = StyleLoss(target, target)  # start distance 0: counted as 0.1 ||A||
    assert loss(features() * 2).item() == pytest.approx(9.0 / 0.01)


def test_tv_loss_is_mean_squared_neighbour_difference():
    image = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    # horizontal diffs: 1, 1 (mean 1); vertical diffs: 0, 0
    assert TVLoss()(image).item() == pytest.approx(1.0)
    assert TVLoss()(torch.full((1, 3, 5, 5), 0.3)).item() == 0


def test_gram_gradient_matches_autograd_of_the_plain_formula():
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram, (features,))
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (gram(features) * weights).sum().backward()
    ours = features.grad.clone()
    features.grad = None
    flat = features.reshape(2, 3, 20)
    ((flat @ flat.transpose(1, 2) / 20) * weights).sum().backward()
    assert torch.allclose(ours, features.grad)
