"""What training and serving must agree on.

- `facesr_core.degradation`: the one degradation and bicubic path (numpy + Pillow only).
- `facesr_core.manifest`: manifest.json, the contract between training and serving (pydantic).
- `facesr_core.latent`: the latent draw z = mu + T * sigma * eps (numpy).
- `facesr_core.quality`: PSNR (numpy).
- `facesr_core.uncertainty`: the uncertainty map the service returns and the evaluation scores.
- `facesr_core.identity`: face identity (dlib; the optional `identity` extra, imported lazily).

This package imports no torch, so the slim serving image can use it as is. Import from the
submodules; this module loads neither, so training code on a machine without pydantic can
still use the degradation.
"""
