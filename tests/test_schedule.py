"""The learning-rate schedule (training/schedule.py)."""

import pytest


def test_lr_schedule_warms_up_then_decays_to_zero():
    from training.schedule import lr_factor

    assert lr_factor("constant", 0.9, 50, 0) == 1.0
    assert lr_factor("constant", 0.0, 0, 10) == pytest.approx(0.1)
    warm = [lr_factor("cosine", s / 100, s, 10) for s in range(100)]
    assert warm[0] == pytest.approx(0.1) and max(warm) <= 1.0
    assert all(a >= b for a, b in zip(warm[10:], warm[11:], strict=False))  # monotone
    assert lr_factor("cosine", 1.0, 100, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_factor("step", 0.5, 1, 0)
