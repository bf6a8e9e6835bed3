"""bench/roofline.py's timed kernels compute the products they are credited with."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_roofline():
    sys.path.insert(0, str(REPO / "bench"))  # as when run as a script: it imports bench/latency.py
    try:
        import roofline
    finally:
        sys.path.remove(str(REPO / "bench"))
    return roofline


@pytest.mark.parametrize("integer", [False, True])
def test_the_timed_matmul_is_the_product(integer):
    # a session that skipped work (or multiplied the wrong operands) would time less than it claims
    roofline = load_roofline()
    run = roofline.ort_matmul(8, 16, 4, integer, threads=1)
    (y,) = run()
    rng = np.random.default_rng(0)  # the operands ort_matmul draws, drawn again
    if integer:
        a = rng.integers(0, 256, (8, 16), dtype=np.uint8).astype(np.int64)
        w = rng.integers(-64, 64, (16, 4), dtype=np.int8).astype(np.int64)
        np.testing.assert_array_equal(y, a @ w)
    else:
        a = rng.standard_normal((8, 16), dtype=np.float32)
        w = rng.standard_normal((16, 4), dtype=np.float32)
        np.testing.assert_allclose(y, a @ w, rtol=1e-5, atol=1e-5)
