"""A small Fashion-MNIST CNN trained by qdit: class accuracy and a domain Fréchet distance.

Input: float ``[N, 1, 28, 28]`` in ``[0, 1]``. ``forward`` gives logits ``[N, 10]``, ``features`` the
penultimate 256-d activations.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_WEIGHTS = "fmnist_classifier.safetensors"


class FashionClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, feature_dim: int = 256) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(64 * 7 * 7, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv((x - 0.5) / 0.5).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def load_classifier(path: str | Path | None = None) -> FashionClassifier:
    """The shipped classifier, in eval mode."""
    from qdit.models.embedded import asset_path
    from qdit.models.state_dict import load_state_dict_file, load_strict

    weights = Path(path) if path is not None else asset_path(CLASSIFIER_WEIGHTS)
    model = FashionClassifier()
    load_strict(model, load_state_dict_file(weights), source=str(weights))
    return model.eval()


def images_to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` or ``[N, 28, 28, 1]`` to float ``[N, 1, 28, 28]`` in [0, 1]."""
    x = torch.as_tensor(np.array(images, copy=True))
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"expected images [N, 28, 28(, 1)], got shape {tuple(x.shape)}")
    return x.float().div(255.0).unsqueeze(1)


def train_classifier(out: str | Path, epochs: int = 4, seed: int = 0, data_dir: str | None = None) -> dict:
    """Train on the Fashion-MNIST training split, report test accuracy, save safetensors to ``out``."""
    from safetensors.torch import save_file

    from qdit.data import load_fashion_mnist
    from qdit.io.atomic import atomic_path

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = load_fashion_mnist("train", data_dir)
    xte, yte = load_fashion_mnist("test", data_dir)
    x, y = images_to_input(xtr), torch.from_numpy(ytr)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // 128):
            idx = perm[i * 128 : (i + 1) * 128]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in images_to_input(xte).split(1000)])
    acc = (pred.numpy() == yte).mean().item()
    with atomic_path(out, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return {"test_accuracy": acc, "epochs": epochs, "seed": seed, "minutes": (time.time() - t0) / 60}
