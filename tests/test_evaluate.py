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


def test_paired_gain_is_the_served_psnr_difference_face_by_face(pack):
    from training.data import FacePack
    from training.evaluate import evaluate, paired_gain, served_psnr

    old, new = random_tiny(), random_tiny()
    with torch.no_grad():
        new.sr.decoder.ConvBlock3.weight.mul_(0.5)
    hrs = FacePack(pack, split="test", sources=("utkface",)).hr
    # the per-face scores are the eval's served row, face for face
    row = evaluate(old, pack, 8, sources=("utkface",), best_of=(), progress=False)["rows"]
    assert abs(served_psnr(old, hrs, 8).mean() - row["icap_mean"]["psnr"]) < 1e-3

    gain = paired_gain(new, old, pack, 8, sources=("utkface",))["utkface_test"]
    diff = served_psnr(new, hrs, 8) - served_psnr(old, hrs, 8)
    assert gain["count"] == len(hrs) == 4
    assert gain["mean_db"] == diff.mean() != 0
    assert gain["se_db"] == diff.std(ddof=1) / np.sqrt(4) > 0
    assert gain["better"] == np.mean(diff > 0)
    back = paired_gain(old, new, pack, 8, sources=("utkface",))["utkface_test"]
    assert back["mean_db"] == -gain["mean_db"] and back["better"] == np.mean(diff < 0)
    same = paired_gain(old, random_tiny(), pack, 8, sources=("utkface",))["utkface_test"]
    assert (same["mean_db"], same["se_db"], same["better"]) == (0, 0, 0)
