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


def test_time_budget_goes_to_the_phases_that_run():
    from training.config import TrainConfig

    def budget(**steps) -> list[float]:
        cfg = TrainConfig(data="d", out="o", time_budget_s=100.0, **steps)
        return [cfg.phase_budget_s(p) for p in (1, 2, 3)]

    assert budget(phase1_steps=5, phase2_steps=5, phase3_steps=5) == pytest.approx([60, 20, 20])
    assert budget(phase1_steps=5, phase2_steps=5, phase3_steps=0) == pytest.approx([75, 25, 0])
    assert budget(phase1_steps=0, phase2_steps=0, phase3_steps=5) == pytest.approx([0, 0, 100])
    assert budget(phase1_steps=0, phase2_steps=5, phase3_steps=5) == pytest.approx([0, 50, 50])
