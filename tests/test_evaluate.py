"""Accuracy floors: what `toolkit eval --min-*` gates a trained model on."""

import pytest

from toolkit.config import AccuracyFloors, ConfigError
from toolkit.evaluate import below_floors

REPORT = {"accuracy": 0.93, "groups": {"non_relational": 0.99, "relational": 0.87},
          "per_type": {"shape": 1.0, "horizontal": 0.99, "vertical": 0.98, "closest": 0.80,
                       "furthest": 0.90, "count": 0.91}}


def test_no_floor_passes_anything():
    assert below_floors(REPORT, AccuracyFloors()) == []


def test_each_floor_names_what_is_under_it():
    failures = below_floors(REPORT, AccuracyFloors(overall=95, group=90, per_type=85))
    assert failures == ["overall accuracy 93.00% is below the floor of 95%",
                        "relational accuracy 87.00% is below the floor of 90%",
                        "closest accuracy 80.00% is below the floor of 85%"]


def test_a_floor_equal_to_the_accuracy_is_met():
    assert below_floors(REPORT, AccuracyFloors(overall=93, per_type=80)) == []


@pytest.mark.parametrize("bad", [-1, 100.5, 150])
def test_a_floor_outside_0_to_100_is_refused(bad):
    with pytest.raises(ConfigError, match="not a percentage"):
        AccuracyFloors(group=bad)
