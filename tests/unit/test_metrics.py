import numpy as np
import pytest

from dlbench.evaluate.metrics import accuracy, all_metrics, brier, ece, nll


def test_hand_computed_values():
    # two samples, two classes; probabilities chosen exactly: p = softmax(logits)
    p = np.array([[0.8, 0.2], [0.4, 0.6]])
    logits = np.log(p)
    labels = np.array([0, 0])
    assert accuracy(logits, labels) == 0.5
    assert nll(logits, labels) == pytest.approx(-(np.log(0.8) + np.log(0.4)) / 2)
    # Brier: ((0.8-1)^2 + 0.2^2 + (0.4-1)^2 + 0.6^2) / 2
    assert brier(logits, labels) == pytest.approx((0.04 + 0.04 + 0.36 + 0.36) / 2)
    # ECE, 15 bins: conf 0.8 (correct) and 0.6 (wrong) fall in different bins -> (|1-0.8| + |0-0.6|) / 2
    assert ece(logits, labels) == pytest.approx((0.2 + 0.6) / 2)


def test_perfectly_calibrated_bin_has_zero_ece():
    p = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert ece(np.log(p), labels) == pytest.approx(0.0)


def test_all_metrics_keys_and_shift_invariance():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10))
    labels = rng.integers(0, 10, 50)
    a = all_metrics(logits, labels)
    b = all_metrics(logits + 100.0, labels)  # softmax is shift invariant; must be numerically stable
    assert set(a) == {"acc", "ece", "nll", "brier", "n"} and a["n"] == 50
    for k in a:
        assert a[k] == pytest.approx(b[k])
