"""Configs as dataclasses: the network sizes (paper preset by default) and the training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the three networks. The defaults are the paper's (Tables 3-5)."""

    channels: int = 64  # feature channels everywhere (the tables' "64")
    encoder_blocks: int = 12  # ResBlock1 x12
    decoder_blocks: int = 3  # ResBlock2 x3
    latent_channels: int = 64  # z is latent_channels x 8 x 8
    hidden_logvar: int = 32  # Conv3/Conv6 width in the log sigma^2 heads
    # Ours, not the paper's: y = x + Tanh(ConvBlock3(...)) with ConvBlock3 zero-initialised, so
    # training starts at bicubic. Measured in SPEC.md as the biggest lever on this CPU.
    global_residual: bool = True

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    "paper": {},
    # For tests and CPU smoke runs: same topology, a fraction of the width and depth.
    "tiny": {"channels": 16, "encoder_blocks": 2, "decoder_blocks": 1, "latent_channels": 8,
             "hidden_logvar": 8},
}


@dataclass
class TrainConfig:
    """One training run (both phases). Every field is a CLI flag of `facesr-train`."""

    data: str = ""  # a pack made by `facesr-prepare` (.npz)
    out: str = "runs/x8"
    scale: int = 8
    preset: str = "paper"
    global_residual: bool = True
    phase1_steps: int = 1000
    phase2_steps: int = 500
    batch_size: int = 16
    patch: int = 0  # >0: train phase 1 on random HR patches of this side (multiple of 16)
    patch_steps: int = 0  # how many of the phase-1 steps use patches (the rest use full faces)
    patch_batch_size: int = 0  # batch size while on patches; 0: batch_size
    hflip: bool = False  # random horizontal flips (the paper uses no augmentation)
    lr_phase1: float = 2.5e-4
    lr_phase2: float = 5e-3
    lambda_s: float = 1.0  # weight of the L1 loss on the z_res path
    # Phase 3 (ours, off by default): theta fine-tuned on the phase-1 loss plus
    # lambda_m * MSE(y, f(x, mu_pred)) with the REN and the ICAP frozen, so that the decoder is
    # trained on the code it is served with (README, "Phase 3").
    phase3_steps: int = 0
    lr_phase3: float = 1e-4
    lambda_m: float = 1.0
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA and CPU alike (see SPEC.md measurements)
    channels_last: bool | None = None
    # None: on for CUDA. All (x, y) pairs made once and kept as uint8 on the device (CachedPairs)
    pair_cache: bool | None = None
    seed: int = 0
    time_budget_s: float = 0.0  # >0: stop each phase early so all fit (phase_budget_s)
    log_every: int = 10
    ckpt_every: int = 200
    sample_every: int = 0  # steps between sample grids; 0: once per epoch of the pack

    def to_dict(self) -> dict:
        return asdict(self)
