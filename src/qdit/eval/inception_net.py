"""The FID InceptionV3 of ``default_1.pt`` rebuilt as a plain PyTorch module, batch norms folded.

:mod:`qdit.eval.inception` runs the TorchScript file's layers one by one (the reference path). That file
costs more than its convolutions: every layer casts its weight to the input's dtype on each call, batch
norm runs as a separate pass after every convolution, and each Inception block makes its branches
NCHW-contiguous before concatenating them, so a channels-last input is reordered at every block. This
module is the same network as ordinary ``nn.Conv2d`` layers whose biases hold the folded batch norms
(``y = relu(conv(x, w * s) + beta - mean * s)``, ``s = 1 / sqrt(var + 0.001)``), so it keeps whatever
memory format and dtype it is given and can be cast to bf16 once (all of it, or only the Inception
blocks: :meth:`InceptionNet.mixed_precision`), frozen or compiled.

The layer names are the file's (TensorFlow's: ``conv``, ``mixed_6.tower_1.conv_2``, ...) and
:func:`fold_from_scripted` checks every name and shape when it copies the weights in. The pooling
parameters are the file's, read off its code: max pools 3x3 stride 2 (``pool0``, ``pool1``, ``mixed_3``,
``mixed_8``) or stride 1 pad 1 (``mixed_10``'s pool branch, as in the TF graph), average pools 3x3 stride
1 pad 1 without counting the padding, and the final 8x8 average pool.

:meth:`InceptionNet.forward` returns both feature sets of one pass: ``pool`` ``[N, 2048]`` and, when
asked, ``spatial`` ``[N, 2023]`` (channels ``0:7`` of ``mixed_6``, flattened in TF's H, W, C order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qdit.errors import QditError
from qdit.kernels.cpu import max_pool3s2

BN_EPS = 0.001  # the file's batch_norm eps
SPATIAL_CHANNELS = 7


class ConvReLU(nn.Module):
    """A convolution with the batch norm folded into its weight and bias, then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def _named(**modules: nn.Module) -> nn.Sequential:
    seq = nn.Sequential()
    for name, m in modules.items():
        seq.add_module(name, m)
    return seq


class AvgPool3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MaxPool3(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            return max_pool3s2(x)  # the compiled loop where it applies (the fp32 stem), else torch
        return F.max_pool2d(x, 3, 1, 1)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvReLU(cin, 64, 1)
        self.tower = _named(conv=ConvReLU(cin, 48, 1), conv_1=ConvReLU(48, 64, 5, 1, 2))
        self.tower_1 = _named(
            conv=ConvReLU(cin, 64, 1), conv_1=ConvReLU(64, 96, 3, 1, 1), conv_2=ConvReLU(96, 96, 3, 1, 1)
        )
        self.tower_2 = _named(pool=AvgPool3(), conv=ConvReLU(cin, pool_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvReLU(cin, 384, 3, 2)
        self.tower = _named(
            conv=ConvReLU(cin, 64, 1), conv_1=ConvReLU(64, 96, 3, 1, 1), conv_2=ConvReLU(96, 96, 3, 2)
        )
        self.pool = MaxPool3(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        w, h = (1, 7), (7, 1)
        pw, ph = (0, 3), (3, 0)
        self.conv = ConvReLU(cin, 192, 1)
        self.tower = _named(
            conv=ConvReLU(cin, c7, 1), conv_1=ConvReLU(c7, c7, w, 1, pw), conv_2=ConvReLU(c7, 192, h, 1, ph)
        )
        self.tower_1 = _named(
            conv=ConvReLU(cin, c7, 1),
            conv_1=ConvReLU(c7, c7, h, 1, ph),
            conv_2=ConvReLU(c7, c7, w, 1, pw),
            conv_3=ConvReLU(c7, c7, h, 1, ph),
            conv_4=ConvReLU(c7, 192, w, 1, pw),
        )
        self.tower_2 = _named(pool=AvgPool3(), conv=ConvReLU(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = _named(conv=ConvReLU(cin, 192, 1), conv_1=ConvReLU(192, 320, 3, 2))
        self.tower_1 = _named(
            conv=ConvReLU(cin, 192, 1),
            conv_1=ConvReLU(192, 192, (1, 7), 1, (0, 3)),
            conv_2=ConvReLU(192, 192, (7, 1), 1, (3, 0)),
            conv_3=ConvReLU(192, 192, 3, 2),
        )
        self.pool = MaxPool3(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """``max_pool``: ``mixed_9`` pools its last branch by averaging, ``mixed_10`` by max (TF's graph)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = ConvReLU(cin, 320, 1)
        self.tower_conv = ConvReLU(cin, 384, 1)
        self.tower_mixed_conv = ConvReLU(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvReLU(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvReLU(cin, 448, 1)
        self.tower_1_conv_1 = ConvReLU(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvReLU(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvReLU(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_pool = MaxPool3(1) if max_pool else AvgPool3()
        self.tower_2_conv = ConvReLU(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class InceptionNet(nn.Module):
    """InceptionV3 up to ``pool_3``; input ``[N, 3, 299, 299]`` scaled as :func:`to_inception_input` does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvReLU(3, 32, 3, 2)
        self.conv_1 = ConvReLU(32, 32, 3)
        self.conv_2 = ConvReLU(32, 64, 3, 1, 1)
        self.pool0 = MaxPool3(2)
        self.conv_3 = ConvReLU(64, 80, 1)
        self.conv_4 = ConvReLU(80, 192, 3)
        self.pool1 = MaxPool3(2)
        self.mixed = InceptionA(192, 32)
        self.mixed_1 = InceptionA(256, 64)
        self.mixed_2 = InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, max_pool=False)
        self.mixed_10 = InceptionE(2048, max_pool=True)

    def stem(self) -> tuple[nn.Module, ...]:
        """The layers before the first Inception block (at 149..71 px), in order."""
        return (self.conv, self.conv_1, self.conv_2, self.pool0, self.conv_3, self.conv_4, self.pool1)

    def blocks(self) -> tuple[nn.Module, ...]:
        """The Inception blocks ``mixed`` .. ``mixed_10`` (35, 17 and 8 px), in order."""
        return (
            self.mixed, self.mixed_1, self.mixed_2, self.mixed_3, self.mixed_4, self.mixed_5,
            self.mixed_6, self.mixed_7, self.mixed_8, self.mixed_9, self.mixed_10,
        )  # fmt: skip

    def mixed_precision(self, dtype: torch.dtype = torch.bfloat16) -> InceptionNet:
        """Cast the Inception blocks to ``dtype``, keeping the stem in float32 (in place; returns self).

        Where bf16 loses accuracy, measured: every bf16 rounding of the stem's activations is amplified
        by the rest of the net (rounding only the *input image* to bf16 moves the pool features by ~3.4%
        relative; a 0.2% Gaussian input perturbation by ~6%), the blocks much less (~0.2-0.6% each). So
        the stem, about a third of the fp32 time, stays fp32 and the blocks run in ``dtype``: pool
        features ~1.3% from fp32's instead of ~3.6% all-bf16 (``benchmarks/bench_eval.py``)."""
        for block in self.blocks():
            block.to(dtype)
        return self

    def forward(self, x: torch.Tensor, spatial: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(pool [N, 2048] float32, spatial [N, 2023] or None)``; ``x`` float32. The stem runs in the
        dtype of its weights, the blocks in theirs (see :meth:`mixed_precision`), the final pool in fp32."""
        for layer in self.stem():
            x = layer(x)
        x = x.to(self.mixed.conv.conv.weight.dtype)
        for block in (self.mixed, self.mixed_1, self.mixed_2, self.mixed_3, self.mixed_4, self.mixed_5):
            x = block(x)
        x = self.mixed_6(x)
        sp = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1) if spatial else None
        for block in (self.mixed_7, self.mixed_8, self.mixed_9, self.mixed_10):
            x = block(x)
        return F.avg_pool2d(x.float(), 8).reshape(x.shape[0], -1), sp


def fold_from_scripted(layers: torch.nn.Module) -> InceptionNet:
    """An fp32 :class:`InceptionNet` from the file's ``net.layers``, batch norms folded (in float64).

    Every convolution of the file (``weight``, ``beta``, ``mean``, ``var``) must map to one of the net's,
    with the same shape, and the other way round; a mismatch names the layer."""
    net = InceptionNet()
    ours = {name: m for name, m in net.named_modules() if isinstance(m, ConvReLU)}
    params = dict(layers.named_parameters())
    theirs = sorted({k.rsplit(".", 1)[0] for k in params})
    if sorted(ours) != theirs:
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise QditError(
            f"Inception layers differ from the rebuilt net: missing {missing[:3]}, extra {extra[:3]}"
        )
    with torch.no_grad():
        for name, m in ours.items():
            w, beta = params[f"{name}.weight"].double(), params[f"{name}.beta"].double()
            mean, var = params[f"{name}.mean"].double(), params[f"{name}.var"].double()
            if w.shape != m.conv.weight.shape:
                raise QditError(
                    f"Inception layer {name}: weight {list(w.shape)}, expected {list(m.conv.weight.shape)}"
                )
            scale = torch.rsqrt(var + BN_EPS)
            m.conv.weight.copy_((w * scale[:, None, None, None]).float())
            m.conv.bias.copy_((beta - mean * scale).float())
    return net.eval().requires_grad_(False)
