"""Grad-CAM saliency: real gradients that point at the pixels that decide the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from automl_vision.explain import ExplainError, find_target_layer, grad_cam, overlay, to_input

SIZE = 16


def _square_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images; class 1 has a bright 4x4 square at a random place. Returns images, labels, square masks."""
    images = rng.integers(0, 60, (n, SIZE, SIZE, 1)).astype(np.uint8)
    labels = np.arange(n) % 2
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in np.flatnonzero(labels == 1):
        y, x = rng.integers(0, SIZE - 4, 2)
        images[i, y:y + 4, x:x + 4, 0] = 230
        masks[i, y:y + 4, x:x + 4] = True
    return images, labels, masks


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def square_model():
    """A small CNN trained until it detects the square: the only evidence for class 1."""
    torch.manual_seed(0)
    # one thread: for a model this small, more threads only spin and cost the shared machine CPU time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images, labels, _ = _square_images(128, rng)
    x = torch.cat([to_input(img, [0.2], [0.25]) for img in images])
    y = torch.from_numpy(labels)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    test, test_labels, masks = _square_images(40, np.random.default_rng(1))
    with torch.no_grad():
        pred = model(torch.cat([to_input(img, [0.2], [0.25]) for img in test])).argmax(1).numpy()
    assert (pred == test_labels).mean() >= 0.95, "the test model did not learn the task"
    return model, test, test_labels, masks


def test_grad_cam_points_at_the_square_that_decides_the_class(square_model):
    model, images, labels, masks = square_model
    hits, ratios = 0, []
    for img, mask in zip(images[labels == 1], masks[labels == 1]):
        sal = grad_cam(model, to_input(img, [0.2], [0.25]), target=1)
        assert sal.cam.shape == (SIZE, SIZE)
        assert 0.0 <= sal.cam.min() and sal.cam.max() <= 1.0
        peak = np.unravel_index(np.argmax(sal.cam), sal.cam.shape)
        # the square, or the pixel next to it (a 3x3 receptive field spreads it by one)
        grown = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        grown[max(0, ys.min() - 1):ys.max() + 2, max(0, xs.min() - 1):xs.max() + 2] = True
        hits += bool(grown[peak])
        ratios.append(sal.cam[mask].mean() / max(sal.cam[~grown].mean(), 1e-6))
    n = int((labels == 1).sum())
    assert hits >= 0.9 * n, f"the saliency peak was on the square in only {hits} of {n} images"
    assert np.median(ratios) > 3.0, f"saliency inside the square is not clearly higher: {np.median(ratios):.2f}"


def test_grad_cam_defaults_to_the_predicted_class_and_reports_it(square_model):
    model, images, labels, _ = square_model
    x = to_input(images[0], [0.2], [0.25])
    sal = grad_cam(model, x)
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0].numpy()
    assert sal.target == int(expected.argmax())
    np.testing.assert_allclose(sal.probs, expected, rtol=1e-5, atol=1e-6)
    assert sal.layer == "features" and sal.grid == (SIZE, SIZE)


def test_a_trial_model_from_a_real_search_is_explained(tiny_run):
    from automl_vision.models import load_model
    from automl_vision.rundir import RunDir

    rd = RunDir(tiny_run)
    number = rd.read_final()["best_trial"]
    model, spec = load_model(rd.trial_dir(number))
    report = rd.read_data_report()
    cache = np.load(rd.cache_dir(spec["image_size"], spec["in_chans"]) / "images.npy", mmap_mode="r")
    # a weak tiny-search network may see no evidence for its class in some image (an empty map, which
    # the dashboard says in words): explain the first of the cached images where it does
    for img in cache[:20]:
        x = to_input(np.asarray(img), spec["mean"], spec["std"])
        a = grad_cam(model, x)  # the predicted class
        if not a.empty:
            break
    assert not a.empty, "no image among the first 20 with evidence for the predicted class"
    other = next(c for c in range(len(report["classes"])) if c != a.target)
    b = grad_cam(model, x, target=other)
    assert a.cam.shape == (spec["image_size"], spec["image_size"])
    assert a.layer.startswith("features") and a.grid[0] * a.grid[1] > 1
    assert abs(float(a.probs.sum()) - 1.0) < 1e-4
    # the map depends on the class asked about: the gradients are real, not a fixed pattern
    assert not np.allclose(a.cam, b.cam)


def test_timm_backbone_uses_its_last_convolutional_stage_unless_it_is_too_coarse():
    """Issue #22: on resnet at 64 px the last stage is a 2x2 grid and the overlay a flat tint."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=3).eval()
    x = torch.randn(1, 3, 128, 128)
    layer, grid, note = find_target_layer(model, x)
    assert layer.startswith("layer4") and grid == (4, 4) and note == "", (layer, grid, note)
    small = torch.randn(1, 3, 64, 64)
    layer, grid, note = find_target_layer(model, small)
    assert layer.startswith("layer3") and grid == (4, 4), (layer, grid)
    assert "2x2" in note and "too coarse" in note
    sal = grad_cam(model, small)
    assert sal.cam.shape == (64, 64) and sal.layer == layer and sal.note == note


def test_a_vision_transformer_is_refused_not_explained_on_its_attention_heads():
    """Issue #22: on a ViT the layer picked was an attention norm (heads x tokens), a meaningless map."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64).eval()
    with pytest.raises(ExplainError, match="patch embedding"):
        grad_cam(vit, torch.randn(1, 3, 64, 64))


def test_a_class_with_no_positive_evidence_is_an_empty_map_that_says_so():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[6].weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))  # class 0: every feature counts against it
    x = torch.rand(1, 1, 16, 16)
    assert grad_cam(model, x, target=0).empty and not grad_cam(model, x, target=0).cam.any()
    assert grad_cam(model, x, target=1).empty is False


def test_a_model_without_spatial_activation_is_refused_clearly():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ExplainError, match="spatial grid"):
        grad_cam(mlp, torch.randn(1, 3, 8, 8))
    with pytest.raises(ExplainError, match="out of range"):
        grad_cam(SmallCNN(), torch.randn(1, 1, 8, 8), target=5)


def test_overlay_blends_a_colour_map_over_grey_and_colour_images():
    grey = np.full((8, 8, 1), 100, dtype=np.uint8)
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:4] = 1.0
    out = overlay(grey, cam, alpha=0.5, scale=3)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    # hot rows and cold rows get different colours; the grey image alone has none
    assert not np.array_equal(out[0, 0], out[-1, -1])
    colour = overlay(np.zeros((8, 8, 3), dtype=np.uint8), cam, alpha=1.0)
    assert colour[0, 0].tolist() != colour[-1, -1].tolist()
