"""A candidate for the fast path, weighed by `bench/gpu.py` (`TRIED`) before the engine takes it:
each convolution, its bias and the ReLU after it as one cuDNN call (`torch.cudnn_convolution_relu`,
runtime fusion), where the engine's network runs three passes over the activations (cuDNN's
convolution, PyTorch's broadcast bias add, the ReLU). At 1024 px on an H100 the bias adds took
0.66 ms and the ReLUs 0.71 ms (forward and backward) of a 6.21 ms iteration (BENCHMARKS.md).

cuDNN's fused call has no backward in PyTorch, so `_ConvReLU` gives it one: the ReLU's mask
from the output, then the convolution's input gradient alone (the weights need none). On a CPU
the forward is the plain convolution and ReLU, so that the backward can be checked there.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine import vgg

ONES = (1, 1)  # VGG's 3x3 convolutions: stride 1, padding 1, dilation 1


class _ConvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.input_dtype = x.dtype
        x = x.to(weight.dtype)  # autocast does not reach into a custom function
        if x.is_cuda:
            y = torch.cudnn_convolution_relu(x, weight, bias, ONES, ONES, ONES, 1)
        else:
            y = F.relu(F.conv2d(x, weight, bias, padding=1))
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, weight, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad.to(y.dtype), y, 0)
        input_grad, _, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, ONES, ONES, ONES, False, [0, 0], 1, [True, False, False])
        return input_grad.to(ctx.input_dtype), None, None


class ConvReLU(nn.Module):
    """A convolution and the ReLU after it, in one call (`_ConvReLU`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ConvReLU.apply(x, self.weight, self.bias)


def fused(net: vgg.VGGFeatures) -> vgg.VGGFeatures:
    """A copy of `net` whose convolutions each carry their ReLU (the ReLU layers pass their input
    on). Its conv layers' outputs are the ReLUs': for the default layers, all ReLUs, the same."""
    net = copy.deepcopy(net)
    for name in vgg.LAYER_NAMES:
        if name.startswith("conv"):
            net.layers[name] = ConvReLU(net.layers[name])
            net.layers["relu" + name[4:]] = nn.Identity()
    return net
