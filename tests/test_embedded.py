"""The shipped embedded model and classifier: they load, and samples are garments of the asked class."""

from __future__ import annotations

import numpy as np
import torch

from qdit.data import load_fashion_mnist
from qdit.diffusion.sampler import SamplerConfig, sample_images
from qdit.models.classifier import images_to_input, load_classifier
from qdit.models.embedded import EMBEDDED_CONFIG, asset_path, load_embedded


def test_assets_are_small_enough():
    assert asset_path("embedded_dit.safetensors").stat().st_size <= 25 * 2**20
    assert asset_path("fmnist_classifier.safetensors").stat().st_size <= 5 * 2**20


def test_embedded_width_takes_paper_group_sizes():
    assert EMBEDDED_CONFIG.hidden_size % 64 == 0
    assert all(EMBEDDED_CONFIG.hidden_size % g == 0 for g in (32, 64, 128))


def test_classifier_is_accurate_on_real_test_images():
    x, y = load_fashion_mnist("test")
    clf = load_classifier()
    with torch.no_grad():
        pred = clf(images_to_input(x[:2000])).argmax(1).numpy()
    assert (pred == y[:2000]).mean() > 0.88


def test_embedded_samples_are_their_class():
    model = load_embedded()
    images, labels = sample_images(
        model, 60, seed=123, config=SamplerConfig(steps=20, cfg_scale=1.5, clip_denoised=True)
    )
    assert images.shape == (60, 28, 28, 1)
    with torch.no_grad():
        pred = load_classifier()(images_to_input(images)).argmax(1).numpy()
    acc = float(np.mean(pred == labels))
    assert acc >= 0.6, f"class accuracy of embedded samples {acc:.2f}"
