"""Configuration of a tiny-digits training run: model sizes, optimisers, evaluation settings.

:func:`default_config` is what the bundled models were trained with; :func:`quick_config` is a smoke
run of seconds. Every field is plain data, so :meth:`TinyTrainConfig.to_dict` is what ``metrics.json``
stores as ``config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from sdvar_lib.eval.metrics import ClassifierConfig
from sdvar_lib.util.checks import check_int, check_number

__all__ = [
    "PATCH_NUMS",
    "VAEConfig",
    "VARConfig",
    "OptimConfig",
    "TinyTrainConfig",
    "default_config",
    "quick_config",
]

PATCH_NUMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)


@dataclass
class VAEConfig:
    """VQVAE constructor arguments (``test_mode`` is set by the caller: False to train, True to ship)."""

    vocab_size: int = 256
    z_channels: int = 16
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1)
    num_res_blocks: int = 1
    v_patch_nums: tuple[int, ...] = PATCH_NUMS
    share_quant_resi: int = 4
    quant_resi: float = 0.5
    beta: float = 0.25
    using_znorm: bool = False

    def kwargs(self, test_mode: bool) -> dict:
        """``VQVAE(**config.kwargs(test_mode))`` builds the model."""
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["v_patch_nums"] = list(self.v_patch_nums)
        d["test_mode"] = test_mode
        return d


@dataclass
class VARConfig:
    """VAR constructor arguments (the VQVAE is passed separately: ``VAR(vae, **config.kwargs())``)."""

    depth: int
    embed_dim: int
    num_heads: int
    num_classes: int = 10
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = PATCH_NUMS

    def kwargs(self) -> dict:
        d = asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        return d


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr`` (per optimizer step)."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.05
    grad_clip: float = 2.0
    max_steps: int | None = None
    """Stop after this many steps (the schedule still spans ``epochs``); for smoke runs."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy (VAR and classifier training)."""

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_number(self.lr, "lr", 0.0, min_inclusive=False)
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps", 1)


@dataclass
class TinyTrainConfig:
    """Everything :func:`sdvar_lib.tiny.train.train_all` needs; :func:`default_config` is what the bundled files use."""

    seed: int = 0
    vae: VAEConfig = field(default_factory=VAEConfig)
    target: VARConfig = field(default_factory=lambda: VARConfig(depth=4, embed_dim=128, num_heads=4, drop_rate=0.1))
    draft: VARConfig = field(default_factory=lambda: VARConfig(depth=1, embed_dim=64, num_heads=2))
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=2e-3, weight_decay=0.0))
    vae_dead_code_epochs: int = 18
    """Re-initialise unused codebook entries after each of the first this-many epochs."""
    classifier_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=12, lr=2e-3, weight_decay=1e-4))
    target_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=1e-3, label_smoothing=0.1))
    draft_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=30, lr=2e-3, label_smoothing=0.1))
    train_subset: int | None = None
    """Use only the first this-many training images (smoke runs and tests)."""
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    eval_num_samples: int = 300
    eval_cfg: float = 1.5
    extra_eval_settings: tuple[tuple[float, int, float], ...] = ((0.0, 0, 0.0), (1.0, 0, 0.0), (3.0, 0, 0.0), (1.5, 20, 0.9))
    """Further ``(cfg, top_k, top_p)`` settings reported in the model card."""

    def to_dict(self) -> dict:
        return asdict(self)


def default_config(seed: int = 0) -> TinyTrainConfig:
    """The configuration of the bundled models (they were trained with ``seed=0``)."""
    return TinyTrainConfig(seed=seed)


def quick_config(seed: int = 0) -> TinyTrainConfig:
    """A smoke-test run (seconds): small subset, one or two epochs per phase, a handful of steps."""
    base = TinyTrainConfig(seed=seed)
    return replace(
        base,
        vae_optim=replace(base.vae_optim, epochs=2, max_steps=6),
        vae_dead_code_epochs=1,
        classifier_optim=replace(base.classifier_optim, epochs=1, max_steps=4),
        target_optim=replace(base.target_optim, epochs=2, max_steps=6),
        draft_optim=replace(base.draft_optim, epochs=2, max_steps=6),
        train_subset=256,
        eval_seeds=(0, 1),
        eval_num_samples=20,
        extra_eval_settings=((0.0, 0, 0.0),),
    )
