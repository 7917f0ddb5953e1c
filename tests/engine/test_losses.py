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


def test_tv_loss_is_the_mean_gradient_magnitude_linear_in_contrast():
    # one forward difference per 2x2 image: (dx, dy) = (1, 0), then (1, 1)
    assert TVLoss()(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])).item() == pytest.approx(1.0, abs=2e-3)
    assert TVLoss()(torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])).item() == pytest.approx(2**0.5, abs=2e-3)
    assert TVLoss()(torch.full((1, 3, 5, 5), 0.3)).item() == 0
    # absolute, not squared: speckle a tenth as high costs a tenth as much, not a hundredth
    speckle = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert TVLoss()(speckle * 0.1).item() == pytest.approx(0.1 * TVLoss()(speckle).item(), rel=0.02)


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_gram_of_bf16_features_is_fp32_and_its_gradient_bf16_in_their_layout(layout, device):
    """The fast path's features are bf16: their Gram is accumulated and kept in fp32 (on CUDA
    straight from the bf16 operands), and its gradient goes back in bf16 and the features' own
    layout, within bf16's rounding of the exact one. A product of two bf16 values is exact in fp32,
    so the Gram's only error is its fp32 sum of 1920 positive terms: at most 1920 units of fp32's
    rounding (2⁻²⁴) relative, where a bf16 sum would be off by up to 2⁻⁸. The CPU's product came
    within 1e-6; the H100's did not, its sum taken in another order."""
    torch.manual_seed(0)
    exact = torch.rand(2, 64, 48, 40, dtype=torch.float64, device=device).contiguous(memory_format=layout)
    features = exact.bfloat16().contiguous(memory_format=layout).requires_grad_(True)
    upcast = features.detach().double().requires_grad_(True)
    g = gram(features)
    assert g.dtype == torch.float32
    exact_gram = gram(upcast)
    relative = ((g.double() - exact_gram).abs() / exact_gram).max()
    assert relative <= 1920 * 2**-24, relative
    weights = torch.randn(2, 64, 64, dtype=torch.float64, device=device)
    (g * weights).sum().backward()
    (gram(upcast) * weights).sum().backward()
    assert features.grad.dtype == torch.bfloat16 and features.grad.stride() == features.stride()
    error = (features.grad.double() - upcast.grad).norm() / upcast.grad.norm()
    assert error < 2**-7, error


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_losses_give_their_gradient_in_the_features_own_layout(layout):
    """The network's features are channels last; a gradient in another layout makes every kernel
    it meets on the way back a strided one (slower on a GPU). Also for a batch a job has left."""
    def make(seed):
        torch.manual_seed(seed)
        return torch.randn(1, 4, 6, 5, dtype=torch.float64).contiguous(memory_format=layout)

    content = ContentLoss.join([ContentLoss(make(1)), ContentLoss(make(2)), ContentLoss(make(3))])
    style = StyleLoss.join([StyleLoss(gram(make(i)), gram(make(i + 3))) for i in range(3)])
    content.keep(torch.tensor([2, 0]))
    style.keep(torch.tensor([2, 0]))
    leaf = torch.cat([make(7), make(8)]).requires_grad_(True)
    features, arrived = leaf * 1, {}  # not a leaf: autograd gives a leaf's .grad the leaf's layout itself
    handle = None
    for name, loss in (("content", content), ("style", style)):
        if handle is not None:
            handle.remove()
        handle = features.register_hook(lambda grad, name=name: arrived.update({name: grad}))
        loss(features).sum().backward(retain_graph=True)
    for grad in arrived.values():
        assert grad.stride() == features.stride()
    flat = features.detach().reshape(2, 4, 30).requires_grad_(True)  # the style gradient by the plain formula
    ((flat @ flat.transpose(1, 2) / 30 - style.target).pow(2).flatten(1).sum(1) / style.norm).sum().backward()
    assert torch.allclose(arrived["style"], flat.grad.view(2, 4, 6, 5))


def test_tv_loss_is_measured_per_output_pixel_at_every_stage():
    """The same smooth ramp at half the size, with the stage's scale 0.5, costs what it costs at full size."""
    full = torch.linspace(0, 1, 64).repeat(1, 3, 64, 1)
    half = torch.linspace(0, 1, 32).repeat(1, 3, 32, 1)
    assert TVLoss(0.5)(half).item() == pytest.approx(TVLoss()(full).item(), rel=0.05)
    assert TVLoss()(half).item() == pytest.approx(2 * TVLoss()(full).item(), rel=0.05)
