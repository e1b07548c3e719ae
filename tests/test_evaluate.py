"""Tables 1-2's evaluation of one face (training/evaluate.py)."""

import numpy as np
import torch
from synthetic import blob_face, random_tiny


def test_best_of_at_temperature_zero_is_the_icap_mean():
    from training.evaluate import evaluate_face

    hr = np.asarray(blob_face(0).resize((128, 128)))
    gen = torch.Generator().manual_seed(0)
    model = random_tiny()
    cold = evaluate_face(model, hr, 8, torch.device("cpu"), (4,), gen, temperature=0.0)
    warm = evaluate_face(model, hr, 8, torch.device("cpu"), (4,), gen, temperature=1.0)
    assert cold["best_of_4"] == cold["icap_mean"]
    assert warm["best_of_4"] != warm["icap_mean"]
