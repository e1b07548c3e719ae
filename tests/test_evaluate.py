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


def test_flip_ensemble_row_is_the_mean_of_the_face_and_its_mirror():
    from training.evaluate import evaluate_face

    model = random_tiny()
    cpu = torch.device("cpu")
    hr = np.asarray(blob_face(1).resize((128, 128)))
    rows = evaluate_face(model, hr, 8, cpu, (), torch.Generator(), flip_ensemble=True)
    mirror = evaluate_face(model, np.ascontiguousarray(hr[:, ::-1]), 8, cpu, (),
                           torch.Generator(), flip_ensemble=True)
    assert rows["icap_mean_flip"] != rows["icap_mean"]  # the tiny model is not symmetric
    # mirroring the face mirrors the ensemble's output: the same PSNR against the mirrored HR
    assert abs(rows["icap_mean_flip"]["psnr"] - mirror["icap_mean_flip"]["psnr"]) < 1e-6
    assert abs(rows["icap_mean"]["psnr"] - mirror["icap_mean"]["psnr"]) > 1e-4
    assert "icap_mean_flip" not in evaluate_face(model, hr, 8, cpu, (), torch.Generator())
