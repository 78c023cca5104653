"""``MODEL_CARD.md`` of a bundle, rendered from its ``metrics.json`` and ``config.json`` contents.

:func:`render_model_card` takes the report as a dict (:meth:`TrainReport.to_dict`, or a stored
``metrics.json``, old or new), so :func:`rerender_model_card` can rewrite the card of an existing
bundle without retraining.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sdvar_lib.tiny.report import machine_of
from sdvar_lib.util.atomic import atomic_write_text

__all__ = ["CARD_NAME", "render_model_card", "rerender_model_card"]

CARD_NAME = "MODEL_CARD.md"


def _fmt_usage(usage: Sequence[float]) -> str:
    return ", ".join(f"{u:.0f}%" for u in usage)


def _mean_pm(summary: dict, digits: int) -> str:
    half = (summary["ci_high"] - summary["ci_low"]) / 2
    return f"{summary['mean']:.{digits}f} ± {half:.{digits}f}"


def _quality_rows(r: dict) -> list[str]:
    rows = []
    for role in ("target", "draft"):
        for q in [r.get(f"{role}_quality")] + [x for who, x in r.get("extra_quality", []) if who == role]:
            if q is None:
                continue
            cc, fd = q["class_consistency"], q["frechet_distance"]
            rows.append(
                f"| {role} | {q['cfg']:g} | {q['top_k']} | {q['top_p']:g} | {q['num_samples']} | "
                f"{_mean_pm(cc, 3)} | {_mean_pm(fd, 1)} | {cc['num_seeds']} |"
            )
    return rows


def _other_device_lines(runs: list[dict]) -> list[str]:
    """Model-card lines for retraining runs timed on other devices (recorded in metrics.json)."""
    lines: list[str] = []
    for run in runs:
        phases = ", ".join(f"{name} {sec:.0f} s" for name, sec in run["phase_seconds"].items())
        lines += [
            "",
            f"On {run['device']} (torch {run['torch_version']}), `{run['command']}` trained everything in "
            f"**{run['train_seconds']:.0f} s** ({phases}); held-out NLL target {run['heldout_nll_target']:.4f}, "
            f"draft {run['heldout_nll_draft']:.4f}. GPU kernels are not bit-identical to the CPU's, so those "
            "weights differ slightly from the bundled (CPU-trained) ones.",
        ]
    return lines


def render_model_card(r: dict, bundle_config: dict, folder: Path) -> str:
    """``MODEL_CARD.md`` text from a report dict (the content of ``metrics.json``, :meth:`TrainReport.to_dict`)."""
    cfg = r['config']
    machine = machine_of(r)
    vae_cfg, tgt, dft = bundle_config["vae"], bundle_config["target"], bundle_config["draft"]
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.pth"))}
    phase_rows = [
        f"| VQVAE | {cfg['vae_optim']['epochs']} | {r['vae']['seconds']:.0f} |",
        f"| classifier | {cfg['classifier_optim']['epochs']} | {r['classifier']['seconds']:.0f} |",
        f"| target VAR | {cfg['target_optim']['epochs']} ({r['target']['steps']} steps) | {r['target']['seconds']:.0f} |",
        f"| draft VAR | {cfg['draft_optim']['epochs']} ({r['draft']['steps']} steps) | {r['draft']['seconds']:.0f} |",
    ]
    quality = _quality_rows(r)
    lines = [
        "# Tiny digits draft/target pair (bundled default models)",
        "",
        bundle_config["description"],
        "",
        "Trained by the project on CPU, without network access, so that the workbench has a small, real,",
        "trained speculative-decoding pair: a draft VAR worse than the target VAR, both on one shared",
        "multi-scale VQVAE. Load with `sdvar_lib.models.checkpoints.load_bundled()` and the metric classifier",
        "with `sdvar_lib.eval.metrics.load_bundled_classifier()`.",
        "",
        "## Data",
        "",
        "- `sklearn.datasets.load_digits` (1,797 greyscale 8x8 digits, 10 classes, shipped with scikit-learn).",
        "- Upsampled to 16x16 with **bilinear** interpolation (`align_corners=False`), grey replicated to 3",
        "  channels, values mapped to `[-1, 1]` (`sdvar_lib.data.digits.load_digits_split`).",
        f"- Stratified split, seed 0: {r['num_train']} train / {r['num_heldout']} held-out images (85 / 15 per class).",
        "  Every model and metric uses this split; only the train part is used for training.",
        "",
        "## Models",
        "",
        "| model | architecture | parameters | file size |",
        "|---|---|---:|---:|",
        f"| VQVAE | vocab {vae_cfg['vocab_size']}, Cvae {vae_cfg['z_channels']}, ch {vae_cfg['ch']}, ch_mult "
        f"{tuple(vae_cfg['ch_mult'])}, {vae_cfg['num_res_blocks']} res block(s)/level, patch nums "
        f"{tuple(vae_cfg['v_patch_nums'])} (16x16 image, 8x8 latent, 7 stages, 155 tokens) | "
        f"{r['vae_num_parameters']:,} | {sizes.get('vae.pth', 0) / 1e6:.2f} MB |",
        f"| target VAR | depth {tgt['depth']}, width {tgt['embed_dim']}, {tgt['num_heads']} heads, dropout "
        f"{tgt['drop_rate']} | {r['target']['num_parameters']:,} | {sizes.get('target.pth', 0) / 1e6:.2f} MB |",
        f"| draft VAR | depth {dft['depth']}, width {dft['embed_dim']}, {dft['num_heads']} heads, dropout "
        f"{dft['drop_rate']} | {r['draft']['num_parameters']:,} | {sizes.get('draft.pth', 0) / 1e6:.2f} MB |",
        f"| classifier | `DigitClassifier` CNN, width {cfg['classifier']['width']}, {cfg['classifier']['feature_dim']}-d "
        f"features, input in [0, 1] | {r['classifier']['num_parameters']:,} | {sizes.get('classifier.pth', 0) / 1e6:.2f} MB |",
        "",
        f"Weight files together: {sum(sizes.values()) / 1e6:.2f} MB. "
        f"Target / draft parameter ratio: {r['target']['num_parameters'] / r['draft']['num_parameters']:.1f}x. "
        "Both VARs: 10 classes, `attn_l2_norm=True`, `cond_drop_rate=0.1` (CFG), `shared_aln=False`.",
        "",
        "## Training",
        "",
        "```",
        r.get("command") or "python -m sdvar_lib.train_tiny --out sdvar_lib/assets/tiny_digits --replace-bundled",
        "```",
        "",
        f"Seed {cfg['seed']}; device `{machine.device}`{f' ({machine.cpu})' if machine.cpu else ''}, torch threads: "
        f"{machine.torch_threads}, torch {machine.torch_version}, {machine.platform}.",
        "",
        "- VQVAE: L1 + MSE reconstruction + vq loss (commitment beta 0.25 + codebook), straight-through; unused",
        f"  codebook entries re-initialised from encoder residuals after each of the first {cfg['vae_dead_code_epochs']} epochs.",
        "- Classifier: cross-entropy with random ±1 px shifts.",
        "- VARs: teacher forcing on the frozen VQVAE's tokens, cross-entropy over all 155 tokens with label",
        f"  smoothing {cfg['target_optim']['label_smoothing']} (target) / {cfg['draft_optim']['label_smoothing']} (draft), "
        "labels dropped with probability 0.1 (CFG), AdamW (betas 0.9/0.95, wd 0.05), linear warmup + cosine,",
        f"  batch {cfg['target_optim']['batch_size']}, peak lr {cfg['target_optim']['lr']:g} (target) / "
        f"{cfg['draft_optim']['lr']:g} (draft), reference VAR initialisation.",
        "  Label smoothing keeps the target from becoming over-confident: without it the default CFG ramp",
        "  (t up to 1.5 at the last stage) collapsed the target's samples onto a few prototypes per class",
        "  (in development runs: class-consistency 0.99 but Fréchet distance about 60 instead of about 30 at cfg 1.5).",
        "  The draft follows the same recipe (same epochs, no dropout, a higher peak lr) with one narrow block;",
        "  in development runs a depth-2 width-64 draft came within the noise of the target's Fréchet distance",
        "  at cfg 1.5 (its digits are messier, but the metric saturates near the finite-sample floor).",
        "",
        "| phase | epochs | seconds |",
        "|---|---|---:|",
        *phase_rows,
        f"| **total training** | | **{r['train_seconds']:.0f}** ({r['train_seconds'] / 60:.1f} min) |",
        f"| evaluation (not training) | | {r['eval_seconds']:.0f} |",
        "",
        "The CPU is shared with other work, so wall times vary between runs.",
        *_other_device_lines(r.get("other_device_runs", [])),
        "",
        "## Metrics (held-out split)",
        "",
        f"- VQVAE reconstruction: mean |error| {r['vae']['heldout_l1']:.4f}, MSE {r['vae']['heldout_mse']:.5f} (pixel range",
        f"  [-1, 1]); Pearson correlation {r['heldout_recon_pearson']:.4f}; classifier accuracy on reconstructions "
        f"{r['heldout_recon_class_consistency']:.4f}.",
        f"- Codebook usage per stage (held-out): {_fmt_usage(r['vae']['heldout_usage_per_stage'])}; per stage (train):",
        f"  {_fmt_usage(r['vae']['train_usage_per_stage'])}; any stage (train): {r['vae']['total_usage']:.0f}%.",
        "  (Stage s has only pn_s^2 tokens per image, so the early stages cannot use many entries.)",
        f"- Classifier accuracy: {r['classifier']['heldout_accuracy']:.4f} on held-out real digits.",
        f"- Teacher-forced NLL (nats/token over all 155 tokens): target **{r['target']['final_heldout_nll']:.4f}**, "
        f"draft **{r['draft']['final_heldout_nll']:.4f}**.",
        "",
        "Generation quality: balanced labels, `sdvar_lib.eval.metrics.evaluate_generator` (seed s uses `g_seed = 1000 s`",
        "+ batch index); class-consistency = classifier prediction equals the requested label; Fréchet distance",
        f"between the classifier's 64-d penultimate features of the generated digits and the {r['num_heldout']}",
        "held-out real digits (lower is better). Mean ± half-width of the 95% Student-t CI over seeds.",
        "",
        "| model | cfg | top_k | top_p | samples/seed | class-consistency | Fréchet distance | seeds |",
        "|---|---:|---:|---:|---:|---|---|---:|",
        *quality,
        "",
        f"For scale: the Fréchet distance of {r['fd_reference'].get('num_samples', 0)} real *train* digits to the "
        "held-out set is "
        f"{r['fd_reference'].get('real_train', float('nan')):.1f}, and of their VQVAE reconstructions "
        f"{r['fd_reference'].get('reconstructed_train', float('nan')):.1f} (the finite-sample floor).",
        "",
        "Samples (`g_seed=0`, cfg 1.5, one row per class): `samples_target.png`, `samples_draft.png`.",
        "",
        "Every decoder on this pair (SDVAR policies and gamma rules, hand-offs): `evaluation.json`, written by",
        "`python -m sdvar_lib.evaluate` (table and command in `BENCHMARKS.md`). Retraining does not rewrite it:",
        "run that command again after retraining.",
        "",
        "## Limitations",
        "",
        "- 16x16 digits only; these models demonstrate the workbench's mechanics, not image quality at scale.",
        "- The held-out set is small (about 270 images), so Fréchet distances carry a finite-sample bias;",
        "  compare models only at the same number of samples.",
        "",
    ]
    return "\n".join(lines)




def rerender_model_card(folder: str | Path) -> Path:
    """Rewrite ``MODEL_CARD.md`` (atomically) from the ``metrics.json`` and ``config.json`` already in ``folder``."""
    folder = Path(folder)
    for name in ("metrics.json", "config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; run the training first")
    report = json.loads((folder / "metrics.json").read_text())
    bundle_config = json.loads((folder / "config.json").read_text())
    return atomic_write_text(folder / CARD_NAME, render_model_card(report, bundle_config, folder))
