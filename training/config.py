"""Configs as dataclasses: the network sizes (paper preset by default) and the training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# The choices of TrainConfig's string options (here, so that the CLI needs no torch).
LR_SCHEDULES = ("constant", "cosine")
DET_LOSSES = ("mse", "l1")
PHASE2_LOSSES = ("kl", "nll")
CALIBRATION_FACES = 64  # int8 calibration faces (training/quantize.py)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the three networks. The defaults are the paper's (Tables 3-5)."""

    channels: int = 64  # feature channels everywhere (the tables' "64")
    encoder_blocks: int = 12  # ResBlock1 x12
    decoder_blocks: int = 3  # ResBlock2 x3
    latent_channels: int = 64  # z is latent_channels x 8 x 8
    hidden_logvar: int = 32  # Conv3/Conv6 width in the log sigma^2 heads
    # Ours, not the paper's: y = x + Tanh(ConvBlock3(...)) with ConvBlock3 zero-initialised, so
    # training starts at bicubic. Measured in docs/method.md as the biggest lever on a CPU.
    global_residual: bool = True
    # Ours: stride-2 transposed convs with balanced sub-pixel phases (models.balance_phases), so a
    # smooth code cannot come out as bands. False (the paper's plain ConvTranspose2d) is also what
    # model configs written before this field existed get.
    balanced_deconv: bool = False
    # Lower bound of the ICAP's log sigma^2 (the paper: -1, by a Tanh into [-1, 1]). Lower values
    # map the Tanh onto [icap_logvar_min, 1] (ours; with --phase2-loss nll, README "Samples").
    icap_logvar_min: float = -1.0

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
    # checkerboard-free transposed convs (README, x16 banding); off by default so that a resumed
    # or --init-from run keeps the function it was trained as; the recipe scripts turn it on
    balanced_deconv: bool = False
    phase1_steps: int = 1000
    phase2_steps: int = 500
    batch_size: int = 16
    patch: int = 0  # >0: train phase 1 on random HR patches of this side (multiple of 16)
    patch_steps: int = 0  # how many of the phase-1 steps use patches (the rest use full faces)
    patch_batch_size: int = 0  # batch size while on patches; 0: batch_size
    hflip: bool = False  # random horizontal flips (the paper uses no augmentation)
    lr_phase1: float = 2.5e-4
    lr_phase2: float = 5e-3
    # Phase 2's objective: kl (the paper's KL(q(z|x) || g(z|r))) or nll (ours: the ICAP's Gaussian
    # fitted to the REN's mean code by its likelihood, so sigma is the spread of that code given x)
    phase2_loss: str = "kl"
    icap_logvar_min: float = -1.0  # the ICAP's log sigma^2 floor (ModelConfig.icap_logvar_min)
    # >0: before phase 2's first step, each latent channel's log sigma^2 is moved to the log of
    # the ICAP mean's squared error on this many batches (the constant sigma the likelihood
    # prefers), through the log sigma^2 head's last BatchNorm bias (models.ICAP.fit_logvar)
    icap_logvar_fit_batches: int = 0
    lambda_s: float = 1.0  # weight of the L1 loss on the z_res path
    # Phase 3 (ours, off by default): theta fine-tuned on the phase-1 loss plus
    # lambda_m * MSE(y, f(x, mu_pred)) with the REN and the ICAP frozen, so that the decoder is
    # trained on the code it is served with (README, "Phase 3").
    phase3_steps: int = 0
    lr_phase3: float = 1e-4
    lambda_m: float = 1.0
    # Recipe options (ours; README "Training recipe" has the ablation behind the defaults).
    init_from: str = ""  # a models/<scale> or run folder: start from its weights (no checkpoint)
    ema: float = 0.0  # >0: keep an EMA of the weights with this decay; each phase ends on it
    lr_schedule: str = "constant"  # constant | cosine (per phase, after warmup_steps)
    warmup_steps: int = 0  # linear learning-rate warm-up at the start of each phase
    det_loss: str = "mse"  # mse | l1: the deterministic term of phase 1 (the paper: mse)
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA, and on CPUs with native bf16 (fast_bf16)
    channels_last: bool | None = None
    # torch.compile the networks of the phase-1 objective (SR encoder, decoder, REN); phases 2,
    # 3 and the sample grids stay eager, so it compiles once. A failure falls back to eager.
    compile: bool = False
    # None: on for CUDA. All (x, y) pairs made once and kept as uint8 on the device (CachedPairs)
    pair_cache: bool | None = None
    seed: int = 0
    time_budget_s: float = 0.0  # >0: stop each phase early so all fit (phase_budget_s)
    log_every: int = 10
    ckpt_every: int = 200
    sample_every: int = 0  # steps between sample grids; 0: once per epoch of the pack
    profile_steps: int = 0  # >0: profile this many phase-1 steps (training/profiling.py)

    def to_dict(self) -> dict:
        return asdict(self)

    def phase_steps(self, phase: int) -> int:
        return (self.phase1_steps, self.phase2_steps, self.phase3_steps)[phase - 1]

    def phase_budget_s(self, phase: int) -> float:
        """Phase 1 gets three quarters of the time budget, phase 2 the rest; with a phase 3,
        60/20/20. A phase of 0 steps gets none, the others share its part (a phase-3-only
        fine-tune gets the whole budget)."""
        if not self.time_budget_s:
            return 0.0
        parts = (0.6, 0.2, 0.2) if self.phase3_steps else (0.75, 0.25, 0.0)
        shares = [share if self.phase_steps(p) else 0.0 for p, share in enumerate(parts, 1)]
        return self.time_budget_s * shares[phase - 1] / (sum(shares) or 1.0)
