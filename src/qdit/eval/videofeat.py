"""ClipNet: qdit's small video feature network for FVD and temporal metrics on moving-garment clips.

The standard FVD features come from I3D (Kinetics-400), which no package ships and which sees our 32x32
grayscale clips only after a 7x upsampling (see :mod:`qdit.eval.i3d`). ClipNet is trained by qdit on the
same clip family as the embedded video model (:func:`qdit.data.make_clips`: a Fashion-MNIST garment moving
along one of 8 paths), so FVD and the frame metrics run offline out of the box, in seconds on a CPU.

Network (input float ``[B, T, 1, 32, 32]`` in ``[0, 1]``, T = 8):

- per-frame 2-D CNN: three strided convolutions (32 -> 16 -> 8 -> 4 px) and a linear layer, ReLU after
  each, giving **frame features** ``[B, T, 128]``. The last layer is a linear map of the flattened 4x4
  map, not a global pool, so frame features keep where the garment is: the motion head needs it;
- temporal 1-D convolutions (kernel 3, zero padded) over the frame features, ReLU, averaged over time:
  **clip features** ``[B, 256]``, the FVD features;
- heads: clip class (10), motion path (8, :data:`qdit.data.MOTIONS`) on clip features, and per-frame
  class (10) on each frame's features.

Training (``python -m qdit.eval.train_clipnet``) adds static and time-shuffled clips with a uniform
motion target, so that clips which do not move like the real ones are told apart, not forced onto a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdit.errors import QditError
from qdit.eval.npz import check_clips
from qdit.eval.refstats import state_fingerprint

CLIPNET_WEIGHTS = "clipnet.safetensors"
CLIP_FRAMES = 8
CLIP_SIZE = 32
NUM_CLASSES = 10
NUM_MOTIONS = 8
FRAME_DIM = 128
CLIP_DIM = 256


@dataclass
class ClipNetOutput:
    frame_features: torch.Tensor  # [B, T, FRAME_DIM]
    clip_features: torch.Tensor  # [B, CLIP_DIM]
    class_logits: torch.Tensor  # [B, NUM_CLASSES]
    motion_logits: torch.Tensor  # [B, NUM_MOTIONS]
    frame_logits: torch.Tensor  # [B, T, NUM_CLASSES]


class ClipNet(nn.Module):
    """Per-frame CNN + temporal convolution; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.frame_net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),  # 16x16
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 8x8
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),  # 4x4
            nn.Flatten(), nn.Linear(128 * 4 * 4, FRAME_DIM), nn.ReLU(),
        )  # fmt: skip
        self.temporal = nn.Sequential(
            nn.Conv1d(FRAME_DIM, CLIP_DIM, 3, padding=1), nn.ReLU(),
            nn.Conv1d(CLIP_DIM, CLIP_DIM, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.class_head = nn.Linear(CLIP_DIM, NUM_CLASSES)
        self.motion_head = nn.Linear(CLIP_DIM, NUM_MOTIONS)
        self.frame_head = nn.Linear(FRAME_DIM, NUM_CLASSES)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1, 32, 32]`` in [0, 1] -> ``[B, T, FRAME_DIM]``."""
        b, t = x.shape[:2]
        return self.frame_net((x.reshape(b * t, *x.shape[2:]) - 0.5) / 0.5).reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> ClipNetOutput:
        frames = self.frame_features(x)
        clip = self.temporal(frames.transpose(1, 2)).mean(dim=2)
        return ClipNetOutput(
            frame_features=frames,
            clip_features=clip,
            class_logits=self.class_head(clip),
            motion_logits=self.motion_head(clip),
            frame_logits=self.frame_head(frames),
        )


def clips_to_input(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W]`` or ``[B, T, H, W, 1]`` -> float ``[B, T, 1, H, W]`` in [0, 1]."""
    x = torch.as_tensor(clips)
    if x.ndim == 5:
        x = x[..., 0]
    return x.float().div(255.0).unsqueeze(2)


def load_clipnet(path: str | Path | None = None) -> ClipNet:
    """ClipNet in eval mode, from the shipped weights (or ``path``); strict key and shape checks."""
    from qdit.models.embedded import asset_path
    from qdit.models.state_dict import load_state_dict_file, load_strict

    weights = Path(path) if path is not None else asset_path(CLIPNET_WEIGHTS)
    model = ClipNet()
    load_strict(model, load_state_dict_file(weights), source=str(weights))
    return model.eval()


def check_clipnet_clips(clips: np.ndarray, what: str = "clips") -> np.ndarray:
    """uint8 ``[N, 8, 32, 32, 1]`` (the shape ClipNet was trained on); else QditError."""
    arr = check_clips(clips, what)
    want = (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 1)
    if arr.shape[1:] != want:
        raise QditError(
            f"ClipNet features need grayscale clips of {CLIP_FRAMES} frames of {CLIP_SIZE}x{CLIP_SIZE} "
            f"[N, {', '.join(map(str, want))}], {what} are {list(arr.shape)} (use --video-features i3d for other clips)"
        )
    return arr


@dataclass
class VideoOutput:
    clip_features: np.ndarray  # [N, D] float32 (the FVD features)
    frame_features: np.ndarray | None = None  # [N, T, F] float32
    frame_probs: np.ndarray | None = None  # [N, T, K] float32, per-frame class probabilities


def _load_default_clipnet() -> ClipNet:
    try:
        return load_clipnet()
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        raise QditError(f"video metrics need qdit's ClipNet, which could not be loaded: {exc}") from exc


class VideoFeatures:
    """Batched ClipNet outputs of uint8 clips ``[N, 8, 32, 32, 1]``: clip features (FVD), frame features
    (consistency) and per-frame class probabilities (frame accuracy)."""

    name = "clipnet"
    has_frames = True  # frame features and probabilities too (I3D gives clip features only)

    def __init__(
        self,
        model: ClipNet | None = None,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise QditError(f"batch size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = (model if model is not None else _load_default_clipnet()).to(self.device).eval()
        self.batch_size = batch_size
        self.progress = progress
        self._fingerprint: str | None = None

    @property
    def key(self) -> str:
        return self.name

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.model)
        return self._fingerprint

    def check(self, clips: np.ndarray, what: str = "clips") -> np.ndarray:
        return check_clipnet_clips(clips, what)

    @torch.inference_mode()
    def extract(self, clips: np.ndarray, desc: str = "clipnet", *, frames: bool = True) -> VideoOutput:
        """Clip features ``[N, 256]``; with ``frames``, frame features ``[N, T, 128]`` and per-frame class
        probabilities ``[N, T, 10]``."""
        from tqdm import tqdm

        arr = check_clipnet_clips(clips)
        clip_f: list[np.ndarray] = []
        frame_f: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        with tqdm(total=arr.shape[0], desc=desc, unit="clip", disable=not self.progress, leave=False) as bar:
            for start in range(0, arr.shape[0], self.batch_size):
                chunk = np.array(arr[start : start + self.batch_size], copy=True)
                out = self.model(clips_to_input(chunk).to(self.device))
                clip_f.append(out.clip_features.float().cpu().numpy())
                if frames:
                    frame_f.append(out.frame_features.float().cpu().numpy())
                    probs.append(torch.softmax(out.frame_logits.float(), dim=-1).cpu().numpy())
                bar.update(len(chunk))
        return VideoOutput(
            clip_features=np.concatenate(clip_f),
            frame_features=np.concatenate(frame_f) if frames else None,
            frame_probs=np.concatenate(probs) if frames else None,
        )
