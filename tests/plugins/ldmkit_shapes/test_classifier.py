"""The shipped Shapes classifier and the Shapes Fréchet distance built on its features."""

from __future__ import annotations

import math

import pytest
import torch

from ldmkit.checkpoints import safetensors_metadata
from ldmkit.errors import InputError
from ldmkit_shapes.classifier import FEATURES, load_classifier, predict, weights_path
from ldmkit_shapes.dataset import ShapesDataset
from ldmkit_shapes.fid import FeatureStats, degrade, feature_stats, features, frechet_distance, shapes_fd

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HELD_OUT = 4_242  # a seed neither the classifier's training nor its own test used


def _stats(mean: list[float], cov: torch.Tensor) -> FeatureStats:
    return FeatureStats(torch.tensor(mean, dtype=torch.float64), cov.double(), 100)


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_frechet_distance_matches_the_closed_form_of_commuting_covariances():
    # S_a = Q diag(a) Q^T and S_b = Q diag(b) Q^T commute: d = |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2
    q = _rotation(5, 0)
    a = torch.tensor([1.0, 2.0, 0.5, 4.0, 0.1], dtype=torch.float64)
    b = torch.tensor([2.0, 0.5, 0.5, 1.0, 3.0], dtype=torch.float64)
    sa = _stats([0, 0, 0, 0, 0], q @ torch.diag(a) @ q.T)
    sb = _stats([1, -1, 0, 2, 0], q @ torch.diag(b) @ q.T)
    expected = 1 + 1 + 4 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_equal_sets_and_symmetric():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randn(400, 8, generator=torch.Generator().manual_seed(2)) * 1.5 + 0.3
    sx, sy = feature_stats(x), feature_stats(y)
    assert frechet_distance(sx, sx) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(sx, sy) == pytest.approx(frechet_distance(sy, sx), rel=1e-9)
    assert frechet_distance(sx, sy) > 1.0


def test_feature_stats_are_numpy_cov_and_reject_single_rows():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    stats = feature_stats(x)
    torch.testing.assert_close(stats.cov, torch.cov(x.double().T))
    with pytest.raises(InputError, match="N >= 2"):
        feature_stats(x[:1])
    with pytest.raises(InputError, match="widths differ"):
        frechet_distance(stats, feature_stats(torch.randn(50, 4)))


@pytest.fixture(scope="module")
def real() -> dict:
    return ShapesDataset.from_params({"seed": HELD_OUT, "single_object": True}).batch(range(600))


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_is_small_and_documents_its_accuracy():
    path = weights_path()
    assert path.stat().st_size < 4_000_000
    meta = safetensors_metadata(path)
    assert 0 < float(meta["test_accuracy"]) <= 1 and int(meta["test_pictures"]) >= 1000


def test_shipped_classifier_accuracy_holds_on_other_held_out_pictures(real, classifier):
    accuracy = float((predict(classifier, real["image"]) == real["class_label"]).float().mean())
    documented = float(safetensors_metadata(weights_path())["test_accuracy"])
    # 600 pictures: the binomial standard error is at most 0.02, so 0.06 is three of them
    assert accuracy >= documented - 0.06
    assert accuracy > 0.95


def test_fd_ranks_real_pictures_above_degraded_ones(real, classifier):
    ref = feature_stats(features(real["image"][:300], classifier))
    other = real["image"][300:]
    same = shapes_fd(other, ref, classifier)
    blurred = shapes_fd(degrade(other, "blur", 1.5), ref, classifier)
    recoloured = shapes_fd(degrade(other, "colours"), ref, classifier)
    assert math.isfinite(same) and same >= 0
    # blur moves the features far more than drawing another set of real pictures does
    assert blurred > 2 * same
    # rotating RGB nearly permutes the classes, which a Gaussian fit of a class-balanced set barely sees (the
    # class accuracy catches it); the off-palette colours still move the features
    assert recoloured > 1.2 * same


def test_features_and_degrade_reject_bad_input(classifier):
    assert features(torch.zeros(2, 3, 64, 64), classifier).shape == (2, FEATURES)
    with pytest.raises(InputError, match="64, 64"):
        features(torch.zeros(2, 3, 32, 32), classifier)
    with pytest.raises(InputError, match="unknown degradation"):
        degrade(torch.zeros(1, 3, 64, 64), "sepia")


def test_metric_sanity_rows_rank_real_pictures_first():
    from ldmkit_shapes.paper_eval import DEGRADATIONS, metric_sanity
    from ldmkit_shapes.paper_plan import EvaluationPlan

    rows = dict(metric_sanity(EvaluationPlan(samples=180, reference=720)))
    assert list(rows) == ["real held-out pictures", *[name for name, _, _ in DEGRADATIONS]]
    real = rows.pop("real held-out pictures")
    assert real["accuracy"] == 1.0  # the parser reads every real picture
    assert rows["wrong colours (RGB rotated)"]["accuracy"] == 0.0  # every colour is another class
    blur = [rows[f"blurred, sigma {s} px"]["fd"] for s in ("0.5", "1", "2")]
    # more blur, further from the real pictures (half a pixel of blur is within the sampling noise of 180)
    assert blur[0] < blur[1] < blur[2] and real["fd"] < blur[1]
    assert rows["wrong colours (RGB rotated)"]["fd"] > real["fd"]  # (mild noise need not move it: see docs/paper.md)
