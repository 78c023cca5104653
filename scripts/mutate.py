#!/usr/bin/env python3
"""Plant bugs in a temporary copy of the repository, one at a time, and report which tests catch them.

    python scripts/mutate.py --list                  # the plants, their files and test selections
    python scripts/mutate.py --check                 # every plant still applies to this tree (no tests run)
    python scripts/mutate.py                         # every plant (CPU: the GPU-only plants are skipped)
    python scripts/mutate.py --only NAME --only NAME --jobs 2 --markdown table.md --json table.json

A plant is one small source edit (``old`` -> ``new``, the old text occurring exactly once in one
file) and the pytest selection that should catch it. The script copies the repository's files
(git's tracked and untracked-but-not-ignored files) into one temporary folder per job, never
touching the working tree; for each plant it edits the copy, runs ``python -m pytest -x`` on the
plant's selection there, and restores the file. Before the plants it runs every selection once on
the unplanted copy (the baseline: a selection that fails without a bug proves nothing;
``--no-baseline`` skips it).

Result of a plant: ``caught`` (the first failing test is named), ``survived`` (its tests pass: a
missing test), ``timeout``, ``error`` (the selection could not run) or ``skipped`` (a GPU-only plant
without CUDA). A *control* plant is harmless on purpose (a docstring, a log message) and must
survive: it checks that the selections fail only for bugs. The exit status is 0 when every bug
was caught and every control survived, 1 otherwise, 2 when the baseline or the arguments are wrong.

The reference fixtures are read from where the checkout sees them (``$SDVAR_FIXTURES`` or
``../shared/fixtures``), so parity tests run in the copies too.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plant:
    """One bug: replace ``old`` (found exactly once in ``path``) by ``new``; ``tests`` should then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str
    control: bool = False
    """Harmless on purpose: must survive."""
    gpu: bool = False
    """Only a CUDA machine runs the tests that see it."""


def P(name, path, old, new, tests, why, **kw) -> Plant:  # noqa: N802 (a table row)
    return Plant(name, path, old, new, tuple(tests.split()), why, **kw)


SAMPLE_I = "tests/test_sample_integrity.py"
FID_T = "tests/test_fid_trust.py"

PLANTS: list[Plant] = [
    # ---- the SDVAR round (sdvar/decoder.py) --------------------------------------------------------------
    P("decoder-no-bonus-stage", "sdvar_lib/sdvar/decoder.py",
      "bonus = len(verify.stages) > proposal.gamma", "bonus = False",
      "tests/test_sdvar.py", "a fully accepted round never draws the bonus stage from p"),
    P("decoder-commits-rejected-proposal", "sdvar_lib/sdvar/decoder.py",
      "committed = list(proposal.tokens[:r]) + [verdicts[r].tokens_if_last_Bl]",
      "committed = list(proposal.tokens[: r + 1])",
      "tests/test_exactness.py tests/test_harness.py", "the first rejected stage is committed uncorrected"),
    P("decoder-target-cache-kept", "sdvar_lib/sdvar/decoder.py",
      "state.target.cache.truncate(self.target_model.begin_ends[last_committed][1])",
      "state.target.cache.truncate(state.target.cache.length)",
      "tests/test_sdvar.py tests/test_harness.py", "the target cache keeps the inputs of rejected stages"),
    P("decoder-draft-cache-one-too-many", "sdvar_lib/sdvar/decoder.py",
      "last_draft_input = min(last_committed, c + proposal.gamma - 1)",
      "last_draft_input = min(last_committed + 1, c + proposal.gamma - 1)",
      "tests/test_harness.py tests/test_sdvar.py", "the draft cache keeps an input built from a rejected stage"),
    P("decoder-stage-accepted-by-any-sample", "sdvar_lib/sdvar/decoder.py",
      "torch.stack([v.stage_accepted_B.all() for v in verdicts])",
      "torch.stack([v.stage_accepted_B.any() for v in verdicts])",
      "tests/test_exactness.py tests/test_harness.py", "a stage counts as accepted when one sample of the batch accepts it"),
    # ---- acceptance policies (sdvar/acceptance.py) --------------------------------------------------------
    P("exact-ratio-inverted", "sdvar_lib/sdvar/acceptance.py",
      "accepted = u_Bl * q_x < target_mass_Bl", "accepted = u_Bl * target_mass_Bl < q_x",
      "tests/test_exactness.py", "accepts with probability q/p instead of p/q"),
    P("exact-residual-abs", "sdvar_lib/sdvar/acceptance.py",
      "resid = (p_BlV - q_BlV).clamp_min(0)", "resid = (p_BlV - q_BlV).abs()",
      "tests/test_exactness.py", "corrections drawn from |p - q| instead of max(p - q, 0)"),
    P("top1-threshold-0.9x", "sdvar_lib/sdvar/acceptance.py",
      "stage_ok = matches.float().mean(dim=1) >= self.threshold",
      "stage_ok = matches.float().mean(dim=1) >= 0.9 * self.threshold",
      "tests/test_acceptance_top1.py", "issue 20 survivor (a): top1_match accepts at 0.9 x its threshold"),
    P("top1-strict-threshold", "sdvar_lib/sdvar/acceptance.py",
      "stage_ok = matches.float().mean(dim=1) >= self.threshold",
      "stage_ok = matches.float().mean(dim=1) > self.threshold",
      "tests/test_acceptance_top1.py", "a share equal to the threshold is rejected"),
    P("top1-keeps-rejected-proposals", "sdvar_lib/sdvar/acceptance.py",
      "tokens = torch.where(stage_ok.unsqueeze(1), proposals_Bl, resampled)", "tokens = proposals_Bl",
      "tests/test_acceptance_top1.py", "a rejected sample keeps the draft's tokens"),
    P("relaxed-budget-not-enforced", "sdvar_lib/sdvar/acceptance.py",
      "return floor_BlV + excess_BlV * scale_Bl1", "return floor_BlV + excess_BlV",
      "tests/test_exactness.py", "the pooled excess is not scaled to the TV budget"),
    # ---- gamma rules (sdvar/gamma.py) ---------------------------------------------------------------------
    P("schedule-cycles", "sdvar_lib/sdvar/gamma.py",
      "return self.values[min(i, len(self.values) - 1)]", "return self.values[i % len(self.values)]",
      "tests/test_gamma.py", "a schedule repeats from its start instead of its last value"),
    P("adaptive-rho-inverted", "sdvar_lib/sdvar/gamma.py",
      "rho = (accepted + self.prior_weight) / (expected + self.prior_weight)",
      "rho = (expected + self.prior_weight) / (accepted + self.prior_weight)",
      "tests/test_gamma.py", "rejections raise the acceptance estimate"),
    P("adaptive-ignores-round-overhead", "sdvar_lib/sdvar/gamma.py",
      "return spend + self.target(c, last - c + 1) + self.round_overhead", "return spend + self.target(c, last - c + 1)",
      "tests/test_gamma.py tests/test_gamma_costs.py", "the round's overhead is not paid"),
    P("program-cost-lag-free", "sdvar_lib/sdvar/gamma.py",
      "return self.round_times[(c, nearest, g)] + sum(self.draft(s, 1) for s in range(d, nearest))",
      "return self.round_times[(c, nearest, g)]",
      "tests/test_program_costs.py", "a draft lagging behind the priced rounds catches up for free"),
    P("loss-bound-ignored", "sdvar_lib/sdvar/gamma.py",
      "if self.costs.round(ctx.c, ctx.draft_stages_held, g, ctx.num_stages) - step <= budget]",
      "if self.costs.round(ctx.c, ctx.draft_stages_held, g, ctx.num_stages) - step <= budget or True]",
      "tests/test_program_costs.py", "the adaptive rule risks rounds whose rejection costs more than its loss bound"),
    P("loss-bound-forgets-the-call", "sdvar_lib/sdvar/gamma.py",
      "        return self.max_loss * total - self.priced_loss(ctx)", "        return self.max_loss * total",
      "tests/test_program_costs.py", "the loss bound does not count what the call's rounds lost so far"),
    P("priced-rule-unbounded", "sdvar_lib/fast/factory.py",
      "max_loss = rule.costs.max_loss if rule.max_loss is None else rule.max_loss",
      "max_loss = rule.max_loss",
      "tests/test_fast_pricing.py", "the fast path's priced rule takes no loss bound"),
    P("priced-round-without-bonus", "sdvar_lib/fast/round.py",
      "return {(c, d, g): drafts[(c, d, g)] + checks[(c, g)] + (bonus[c + g] if c + g < S else 0.0)",
      "return {(c, d, g): drafts[(c, d, g)] + checks[(c, g)]",
      "tests/test_fast_pricing.py", "the fast path's price of a round leaves out its bonus stage"),
    P("pricing-always-stops-at-gamma-1", "sdvar_lib/fast/round.py",
      "if max_loss is not None and all(rounds[(c, c, 1)] - steps[c] > STOP_MARGIN * max_loss * sum(steps)",
      "if max_loss is not None or all(rounds[(c, c, 1)] - steps[c] > STOP_MARGIN * max_loss * sum(steps)",
      "tests/test_fast_pricing.py", "the fast path times only the gamma-1 rounds even where a round fits the bound"),
    P("gamma-1-table-serves-any-rule", "sdvar_lib/sdvar/gamma.py",
      "if covers is not None and (self.max_loss is None or self.max_loss > covers):",
      "if covers is not None and self.max_loss is not None and self.max_loss > 2 * covers:",
      "tests/test_fast_pricing.py", "a table of only gamma-1 rounds prices a rule without a loss bound"),
    P("pricing-counts-captures-twice", "sdvar_lib/fast/factory.py",
      "self._pricing_s += max(time.perf_counter() - t0 - built, 0.0)", "self._pricing_s += time.perf_counter() - t0",
      "tests/test_fast_pricing.py", "the captures made while pricing count twice as one-off seconds"),
    P("plan-from-the-unpriced-rule", "sdvar_lib/sdvar/decoder.py",
      "        never = priced_never\n", "",
      "tests/test_fast_pricing.py", "a call plans with the rule before the run factory priced it"),
    P("adaptive-never-falls-back", "sdvar_lib/sdvar/gamma.py",
      "best_g, best = 0, 0.0", "best_g, best = 1, -1e300",
      "tests/test_gamma.py", "proposes a stage even when nothing is saved"),
    # ---- KV caches (models/kv_cache.py) -------------------------------------------------------------------
    P("cache-chunk-unmasked", "sdvar_lib/models/kv_cache.py",
      "if l == 0 or self._stage_of_position[start] == self._stage_of_position[end - 1]:",
      "if l >= 0:",
      "tests/test_kv_cache.py", "a multi-stage chunk attends without its block-causal mask"),
    P("cache-stages-held-off-by-one", "sdvar_lib/models/kv_cache.py",
      "return self._stage_of_position[self._length - 1] + 1", "return self._stage_of_position[self._length - 1]",
      "tests/test_kv_cache.py tests/test_harness.py", "the cache reports one stage fewer than it holds"),
    # ---- sampling filter and CFG (models/sampling.py) -----------------------------------------------------
    P("top-k-drops-the-kth", "sdvar_lib/models/sampling.py",
      "logits_BlV = logits_BlV.masked_fill(logits_BlV < kth_Bl1, -torch.inf)",
      "logits_BlV = logits_BlV.masked_fill(logits_BlV <= kth_Bl1, -torch.inf)",
      "tests/test_sampling_reference.py tests/test_sampling_boundaries.py", "top-k keeps k - 1 tokens"),
    P("top-p-boundary", "sdvar_lib/models/sampling.py",
      "remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)",
      "remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) < (1 - top_p)",
      "tests/test_sampling_reference.py tests/test_sampling_boundaries.py",
      "top-p keeps a token whose cumulative mass is exactly 1 - top_p"),
    P("cfg-strength-over-S", "sdvar_lib/models/sampling.py",
      "return cfg * (si / (num_stages - 1))", "return cfg * (si / num_stages)",
      "tests/test_sampling_reference.py tests/test_reference_parity.py", "guidance ramps to cfg (S-1)/S, not cfg"),
    P("cfg-halves-swapped", "sdvar_lib/models/sampling.py",
      "return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]",
      "return (1 + t) * logits_2BlV[B:] - t * logits_2BlV[:B]",
      "tests/test_sampling_reference.py tests/test_reference_parity.py", "guides towards the unconditional half"),
    # ---- quantizer (models/quant.py) ----------------------------------------------------------------------
    P("f_hat-bilinear", "sdvar_lib/models/quant.py",
      '    return F.interpolate(h_BChw, size=size, mode="bicubic")',
      '    return F.interpolate(h_BChw, size=size, mode="bilinear")',
      "tests/test_reference_parity.py", "stage contributions upsampled bilinearly"),
    P("next-input-nearest", "sdvar_lib/models/quant.py",
      'return F.interpolate(f_hat_BChw, size=(pn, pn), mode="area").reshape(B, C, -1).transpose(1, 2)',
      'return F.interpolate(f_hat_BChw, size=(pn, pn), mode="nearest").reshape(B, C, -1).transpose(1, 2)',
      "tests/test_reference_parity.py", "the next stage's input downsampled by nearest, not area"),
    # ---- decoding images --------------------------------------------------------------------------------------
    P("images-skip-post-quant-conv", "sdvar_lib/models/vqvae.py",
      "return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)", "return self.decoder(f_hat_BChw).clamp(-1, 1)",
      "tests/test_reference_parity.py", "the decode skips post_quant_conv"),
    P("fast-decode-shift", "sdvar_lib/fast/decode.py",
      "return h.clamp(-1, 1).to(torch.float32, memory_format=torch.contiguous_format)",
      "return (h.clamp(-1, 1) + 1e-3).to(torch.float32, memory_format=torch.contiguous_format)",
      "tests/test_gpu_decode.py", "the fast decoder's images are off by 1e-3"),
    P("graphed-decode-shift", "sdvar_lib/fast/graphs.py",
      "return entry.img_B3HW.clone()", "return entry.img_B3HW.clone() + 1e-3",
      "tests/test_gpu_decode.py", "issue 20 survivor (e): the graphed decode's images are off by 1e-3", gpu=True),
    # ---- the fast path's per-call start (fast/run.py) --------------------------------------------------------
    P("fast-prologue-only-once", "sdvar_lib/fast/run.py",
      "            self._prologue_program = program\n        self._prologue_program.run()",
      "            self._prologue_program = program\n            self._prologue_program.run()",
      "tests/test_fast.py", "later calls decode with the first call's class condition"),
    P("fast-labels-not-copied", "sdvar_lib/fast/run.py",
      "        self._labels_B.copy_(label_B)", "        pass",
      "tests/test_fast.py", "every call decodes unconditionally (the labels never reach the condition)"),
    # ---- the host trace (bench/trace.py) ----------------------------------------------------------------------
    P("host-trace-never-restores", "sdvar_lib/bench/trace.py",
      "        for owner, attr, own in reversed(undo):\n", "        for owner, attr, own in reversed(undo[:0]):\n",
      "tests/test_bench_trace.py", "the library's functions stay wrapped after a trace"),
    P("host-trace-depth-never-closes", "sdvar_lib/bench/trace.py",
      "            recorder.depth -= 1\n", "            pass\n",
      "tests/test_bench_trace.py", "the marks' nesting grows with every call"),
    # ---- statistics (sdvar/stats.py) -------------------------------------------------------------------------
    P("stats-tokens-per-sample", "sdvar_lib/sdvar/stats.py",
      "(si, accepted_Bl.numel(), ok) for si, accepted_Bl, ok in judged",
      "(si, accepted_Bl.shape[-1], ok) for si, accepted_Bl, ok in judged",
      "tests/test_sdvar.py tests/test_stats_counts.py", "proposed tokens counted for one sample of the batch"),
    P("pooled-drops-draft-passes", "sdvar_lib/sdvar/stats.py",
      "draft_passes=self.draft_passes + other.draft_passes,", "draft_passes=self.draft_passes,",
      "tests/test_sample.py", "pooled statistics keep the first call's draft passes"),
    # ---- hand-offs (sdvar/handoff.py) -------------------------------------------------------------------------
    P("handoff-passes-swapped", "sdvar_lib/sdvar/handoff.py",
      "stats = stats.with_passes(target=part.passes) if is_target else stats.with_passes(draft=part.passes)",
      "stats = stats.with_passes(draft=part.passes) if is_target else stats.with_passes(target=part.passes)",
      "tests/test_registry.py tests/test_stats_counts.py", "a hand-off counts the target's passes as the draft's"),
    # ---- sample sets (samples/) -----------------------------------------------------------------------------
    P("shard-indices-unchecked", "sdvar_lib/samples/shards.py",
      "if not np.array_equal(shard.indices_b, expected) or list(shard.labels_b) != list(spec.labels[: spec.num_real]):",
      "if False:",
      SAMPLE_I, "issue 20 survivor (b): a resumed shard holding another batch's indices and labels is taken"),
    P("shard-set-unchecked", "sdvar_lib/samples/shards.py",
      "if set_id is not None and shard.set_id != set_id:", "if False:",
      SAMPLE_I, "a shard of another set is taken"),
    P("shard-images-hash-unchecked", "sdvar_lib/samples/shards.py",
      'if images and _images_sha256(shard.images_bHW3) != meta.get("images_sha256"):', "if False:",
      SAMPLE_I, "a shard whose images were changed is taken"),
    P("images-bgr", "sdvar_lib/samples/sampler.py",
      "return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()",
      "return u8.flip(1).permute(0, 2, 3, 1).contiguous().cpu().numpy()",
      SAMPLE_I, "issue 20 survivor (c): the set's channels written in BGR order"),
    P("png-bgr", "sdvar_lib/samples/sampler.py",
      "Image.fromarray(img).save(", "Image.fromarray(img[..., ::-1].copy()).save(",
      SAMPLE_I, "the PNGs' channels in BGR order"),
    P("complete-without-hash", "sdvar_lib/samples/shards.py",
      "if hashes and FileRecord.of(path).sha256 != record.sha256:", "if False:",
      SAMPLE_I, "a changed samples.npz of the right size is called complete"),
    P("complete-without-size", "sdvar_lib/samples/shards.py",
      "if size != record.bytes:", "if False:",
      SAMPLE_I, "a truncated samples.npz is only caught by its hash, after the models load"),
    P("png-skipped-when-folder-exists", "sdvar_lib/samples/sampler.py",
      "if folder.pngs_present(manifest, plan.labels):", "if folder.png_path.is_dir():",
      SAMPLE_I, "the old --png bug: an existing png/ (even empty) is taken for written PNGs"),
    P("plan-g-seed", "sdvar_lib/samples/plan.py",
      "return self.seed * SEED_STRIDE + batch", "return self.seed + SEED_STRIDE * batch",
      "tests/test_sample.py::test_plan_labels_seeds_and_padding", "batch b's random stream is not the documented one"),
    P("plan-padding-labels", "sdvar_lib/samples/plan.py",
      "rows = np.arange(start, start + self.batch_size) % self.num_images",
      "rows = np.minimum(np.arange(start, start + self.batch_size), self.num_images - 1)",
      "tests/test_sample.py::test_plan_labels_seeds_and_padding", "the last batch is padded with the last label"),
    P("npz-short-member-accepted", "sdvar_lib/samples/npz.py",
      "if written != expected:", "if written > expected:",
      "tests/test_sample.py::test_npz_stream_round_trip", "an archive whose chunks are too short is written"),
    # ---- metrics (eval/) -----------------------------------------------------------------------------------------
    P("fid-without-mean-term", "sdvar_lib/eval/metrics.py",
      "fd = float(diff @ diff + np.trace(a.cov_DD)", "fd = float(np.trace(a.cov_DD)",
      "tests/test_fid.py", "FID ignores the distance of the means"),
    P("is-one-split", "sdvar_lib/eval/fid.py",
      "for i in range(0, logits.shape[0], split_size):", "for i in range(0, logits.shape[0], logits.shape[0]):",
      "tests/test_fid.py", "the Inception Score ignores its splits"),
    P("pr-k-off-by-one", "sdvar_lib/eval/fid.py",
      "out.append(d.kthvalue(k + 1, dim=1).values)", "out.append(d.kthvalue(k, dim=1).values)",
      "tests/test_fid.py", "the k-NN radius of precision/recall is the (k-1)-th neighbour"),
    P("stored-stats-for-any-extractor", "sdvar_lib/eval/fid.py",
      'if reference_stats == "auto" and extractor.name == "inception" and is_file:',
      'if reference_stats == "auto" and is_file:',
      "tests/test_fid.py", "a reference's stored Inception mu/sigma used for another network's features"),
    P("fid-minimum-not-enforced", "sdvar_lib/eval/fid.py",
      "if not allow_few and num_images < fid_minimum(feature_dim):", "if False:",
      FID_T, "FID of 2 images computed without a word"),
    P("fid-stats-size-only", "sdvar_lib/eval/fid.py",
      "if actual != recorded:", "if actual.bytes != recorded.bytes:",
      FID_T, "a stats.json of another set of the same size is attached"),
    P("fid-out-may-be-an-input", "sdvar_lib/util/atomic.py",
      "if _same_file(path, Path(source)):", "if False:",
      FID_T, "fid --out/--plot may write over the .npz being scored (with --replace)"),
    P("fid-out-overwrites", "sdvar_lib/util/atomic.py",
      "if (path.exists() or path.is_symlink()) and not replace:", "if False:",
      FID_T, "fid --out/--plot write over an existing file"),
    # ---- atomic outputs (util/atomic.py) ----------------------------------------------------------------------
    P("atomic-leaves-temporaries", "sdvar_lib/util/atomic.py",
      "            tmp.unlink()\n        if isinstance(exc, OSError):", "            pass\n        if isinstance(exc, OSError):",
      "tests/test_atomic.py", "an interrupted write leaves its temporary beside the file"),
    P("atomic-replaces-user-folder", "sdvar_lib/util/atomic.py",
      "    if foreign:\n        return (f\"{shown} holds files its run did not write",
      "    if False:\n        return (f\"{shown} holds files its run did not write",
      "tests/test_atomic.py", "a folder of user files is replaced"),
    # ---- the harness (test_framework/) --------------------------------------------------------------------------
    P("harness-float32-cache-10x", "test_framework/tolerances.py",
      "embeddings=Bound(1e-5, 1e-6), cache=Bound(1e-5, 1e-6),", "embeddings=Bound(1e-5, 1e-6), cache=Bound(1e-4, 1e-5),",
      "tests/test_harness_float32_bounds.py", "issue 20 survivor (d): the float32 cache tolerance loosened 10x"),
    P("eval-mode-restores-every-module-to-training", "sdvar_lib/util/modes.py",
      "        for m in switched:\n            m.training = True",
      "        for m in (m for root in modules for m in _walk(root)):\n            m.training = True",
      "tests/test_modes.py", "a submodule the caller left in eval mode comes back in training mode"),
    P("eval-mode-switches-nothing", "sdvar_lib/util/modes.py",
      "        for m in _modules_of(root).in_training():", "        for m in ():",
      "tests/test_modes.py tests/test_reliability.py", "models left in training mode generate with dropout on"),
    P("eval-mode-kept-walk-ignores-registrations", "sdvar_lib/util/modes.py",
      "        return (self.registrations == _registrations\n", "        return (True\n",
      "tests/test_modes.py", "a child replaced since the last call (same count) runs in training mode"),
    P("eval-mode-kept-walk-ignores-child-counts", "sdvar_lib/util/modes.py",
      "                and tuple(map(len, self.children)) == self.counts)",
      "                and True)",
      "tests/test_modes.py", "a module ModuleList.insert added since the last call runs in training mode"),
    P("eval-mode-kept-walk-keeps-the-flags", "sdvar_lib/util/modes.py",
      "modules, tuple(vars(m) for m in modules), children,",
      "modules, tuple({'training': m.training} for m in modules), children,",
      "tests/test_modes.py", "the flags read when the walk was made: a submodule switched to training since runs so"),
    P("eval-mode-skips-flags-outside-the-dict", "sdvar_lib/util/modes.py",
      "        return found + [m for m in self.others if m.training]\n",
      "        return found\n",
      "tests/test_modes.py", "a module whose training flag is a property (TorchScript) runs in training mode"),
    P("memory-total-of-device-0-for-every-device", "sdvar_lib/util/memory.py",
      "        index = device.index if device.index is not None else torch.cuda.current_device()",
      "        index = 0",
      "tests/test_footprint.py", "one kept total answers for every GPU: a batch that fits GPU 0 is let through on a smaller one"),
    P("labels-batch-1-off-the-generator", "sdvar_lib/models/sampling.py",
      "            noise = torch.empty_like(uniform).exponential_(generator=rng)",
      "            noise = torch.empty_like(uniform).exponential_()",
      "tests/test_sampling_reference.py", "batch-1 labels from the global RNG: a seeded call draws another class"),
    P("run-drawing-leaves-the-calls-generator-behind", "sdvar_lib/fast/run.py",
      "        program.run()\n        source.set_state(self.noise_rng.get_state())",
      "        program.run()",
      "tests/test_fast_round.py", "the call's generator does not move on by a program's draws: later draws repeat them"),
    P("run-drawing-ignores-the-calls-generator", "sdvar_lib/fast/run.py",
      "        self.noise_rng.set_state(source.get_state())\n", "",
      "tests/test_fast.py tests/test_fast_round.py", "stage programs draw from the run's own stream, not the call's seed"),
    P("run-drawing-without-a-seed-draws-its-own-stream", "sdvar_lib/fast/run.py",
      "        source = rng if rng is not None else _default_generator(self.model.device)",
      "        source = rng if rng is not None else self.noise_rng",
      "tests/test_fast.py", "g_seed=None calls draw from the run's generator, not torch.manual_seed's stream"),
    P("device-rounds-decode-the-wrong-f-hat", "sdvar_lib/fast/round.py",
      "            after_last(self.slots.f_hat[S - 1])", "            after_last(self.slots.f_hat[S - 2])",
      "tests/test_fast_round.py", "the decode queued behind the last round reads the f_hat before the last stage"),
    P("precompile-warmups-miss-the-first-adaln", "sdvar_lib/fast/fused.py",
      "        lambda: ops.add_ln_modulate(x, ada[:, 2], ada[:, 4], eps),\n",
      "", "tests/test_fast_kernels.py", "the first block's AdaLN would compile on first use, one after another"),
    P("sampler-draw-specialised", "sdvar_lib/fast/kernels/sampling.py",
      'SIZES_SAMPLE = ["B", "l", "chunk_l", "offset", "top_k", "draw"]',
      'SIZES_SAMPLE = ["B", "l", "chunk_l", "offset", "top_k"]',
      "tests/test_fast_kernels.py", "drawing and verifying would compile the 5 s sampler kernel twice"),
    P("sampler-token-slots-specialised-on-alignment", "sdvar_lib/fast/kernels/sampling.py",
      'UNALIGNED_SAMPLE = ["IDX"]', "UNALIGNED_SAMPLE = []",
      "tests/test_fast_kernels.py", "odd batch sizes would compile the sampler kernel once more"),
    P("sampler-top-k-off-by-one", "sdvar_lib/fast/kernels/sampling.py",
      "t = tl.where(count >= k, cand, t)", "t = tl.where(count > k, cand, t)",
      "tests/test_fast_kernels.py", "the bisection finds the (k+1)-th largest value: one token too many survives"),
    P("sampler-keys-misorder-negatives", "sdvar_lib/fast/kernels/sampling.py",
      "bits ^ tl.full((BLOCK_M, BLOCK_V), 0xFFFFFFFF, tl.uint32)", "bits",
      "tests/test_fast_kernels.py", "negative logits ordered backwards: wrong cut-offs wherever they reach below 0"),
    P("sampler-top-k-drops-tied-kth", "sdvar_lib/fast/kernels/sampling.py",
      "kth = tl.min(tl.where(keys >= kth_key", "kth = tl.min(tl.where(keys > kth_key",
      "tests/test_fast_kernels.py", "the k-th largest value itself dropped"),
    P("sampler-top-p-may-drop-the-largest", "sdvar_lib/fast/kernels/sampling.py",
      ", xmax)\n            x = tl.where(x < lowest_kept", ", float('inf'))\n            x = tl.where(x < lowest_kept",
      "tests/test_fast_kernels.py", "a tiny top-p drops every token (NaN distribution)"),
    P("groupnorm-tiles-ignore-the-tiling", "sdvar_lib/fast/kernels/groupnorm.py",
      "min(triton.next_power_of_2(rows), tiling.values // width)", "min(triton.next_power_of_2(rows), 4096 // width)",
      "tests/test_fast_kernels.py", "the measured tiling would not reach the kernels"),
    P("groupnorm-split-reads-past-the-map", "sdvar_lib/fast/kernels/groupnorm.py",
      "end = tl.minimum(start + pixels_per_split, HW)", "end = start + pixels_per_split",
      "tests/test_fast_kernels.py", "a last partial split sums pixels of the next image into its statistics"),
    P("groupnorm-stats-sum-one-tile-row", "sdvar_lib/fast/kernels/groupnorm.py",
      "        acc += x  # elementwise", "        acc = x  # elementwise",
      "tests/test_fast_kernels.py", "the mean would come from each split's first tile only"),
    P("fast-decode-entry-bias-skips-the-shortcut-conv", "sdvar_lib/fast/decode.py",
      "                entry_bias = nin.weight.float()[:, :, 0, 0] @ entry_bias", "                pass",
      "tests/test_fast_kernels.py", "an upsampling convolution's bias added past the 1x1 shortcut without its weights"),
    P("fast-decode-entry-bias-not-in-the-residual", "sdvar_lib/fast/decode.py",
      "        if entry_bias is not None:\n            bias = bias + entry_bias", "        if False:\n            pass",
      "tests/test_fast_kernels.py", "the residual misses the bias of the convolution that made the block's input"),
    P("fast-decode-entry-bias-kept-for-the-next-level", "sdvar_lib/fast/decode.py",
      "            h_bias = None\n", "",
      "tests/test_fast_kernels.py", "conv_in's bias added twice: in the mid block and again at the first level"),
    P("first-stage-attention-returns-k", "sdvar_lib/fast/fused.py",
      "o = qkv[:, :, 2 * C :].contiguous()", "o = qkv[:, :, C : 2 * C].contiguous()",
      "tests/test_fast.py::test_first_stage_pass_launches_no_attention_and_gives_its_logits",
      "the first stage's skipped attention returns the key instead of the value"),
    P("first-stage-shortcut-ignores-a-mask", "sdvar_lib/fast/fused.py",
      "alone = end == 1 and mask is None", "alone = end == 1",
      "tests/test_fast.py::test_first_stage_pass_launches_no_attention_and_gives_its_logits",
      "an explicit mask at the first stage would not be applied"),
    P("first-stage-projection-on-a-strided-v", "sdvar_lib/fast/fused.py",
      "o = qkv[:, :, 2 * C :].contiguous()", "o = qkv[:, :, 2 * C :]",
      "tests/test_fast.py::test_first_stage_pass_launches_no_attention_and_gives_its_logits",
      "the projection reads a strided v: another GEMM kernel, other bits than through the attention (bf16)"),
    P("rule-planned-at-every-call", "sdvar_lib/sdvar/decoder.py",
      "        never = self._never_drafts(gamma_rule)\n",
      "        gamma_rule.check_for(self.num_stages)\n        never = plan_never_drafts(gamma_rule, self.num_stages)\n",
      "tests/test_bench_calibration.py::test_a_rule_is_checked_and_planned_once_per_rule_object",
      "the rule's plan is walked again at every call (host time at batch 1)"),
    P("mutable-rule-plan-kept", "sdvar_lib/sdvar/decoder.py",
      "        if not (is_dataclass(rule) and rule.__dataclass_params__.frozen):\n            return never\n", "",
      "tests/test_bench_calibration.py::test_a_rule_is_checked_and_planned_once_per_rule_object",
      "a rule that can change between calls keeps its first plan"),
    P("per-stage-attention-sees-the-whole-chunk", "sdvar_lib/fast/fused.py",
      "        kv_end = position + end\n", "        kv_end = position + stage_ends[-1]\n",
      "tests/test_fast.py::test_per_stage_chunk_attention_gives_the_masked_logits",
      "every stage's queries attend to the later stages of the chunk too: not block-causal"),
    P("per-stage-attention-misses-its-own-stage", "sdvar_lib/fast/fused.py",
      "        kv_end = position + end\n", "        kv_end = max(position + begin, 1)\n",
      "tests/test_fast.py::test_per_stage_chunk_attention_gives_the_masked_logits",
      "a stage's queries do not see their own stage's keys"),
    P("chunk-stage-ends-one-late", "sdvar_lib/fast/fused.py",
      "    ends = [p - position for p in", "    ends = [p - position + 1 for p in",
      "tests/test_fast.py::test_chunk_stage_ends tests/test_fast.py::test_per_stage_chunk_attention_equals_eager",
      "each stage's segment ends one token late"),
    P("per-stage-config-ignored", "sdvar_lib/fast/run.py",
      'if choice == "per_stage" or (choice == "auto"', 'if (choice == "auto"',
      "tests/test_fast.py::test_per_stage_chunk_attention_gives_the_masked_logits "
      "tests/test_fast.py::test_per_stage_chunk_attention_equals_eager",
      'chunk_attention="per_stage" runs the masked attention'),
    P("per-stage-pays-ignores-the-added-launches", "sdvar_lib/fast/fused.py",
      "PER_STAGE_MIN_SAVED * (len(stage_ends) - 1)", "PER_STAGE_MIN_SAVED",
      "tests/test_fast.py::test_per_stage_attention_is_taken_where_it_was_measured_faster",
      "the auto rule takes per-stage attention for five-stage chunks where the launches cost more than it saves"),
    P("stage-attention-skips-the-first-key-block", "sdvar_lib/fast/kernels/attention.py",
      "    for start in range(0, pos, BLOCK_N):", "    for start in range(BLOCK_N, pos, BLOCK_N):",
      "tests/test_fast_kernels.py::test_stage_attention_kernel",
      "the fused stage attention never sees the cache's first 64 positions"),
    P("stage-attention-cache-written-by-the-second-block", "sdvar_lib/fast/kernels/attention.py",
      "        first = n_ok[:, None] & (pm == 0)", "        first = n_ok[:, None] & (pm == 1)",
      "tests/test_fast_kernels.py::test_stage_attention_kernel",
      "a stage of one query block leaves its keys and values out of the cache"),
    P("stage-attention-stale-rescale", "sdvar_lib/fast/kernels/attention.py",
      "    acc = acc * alpha[:, None] + tl.dot(", "    acc = acc + tl.dot(",
      "tests/test_fast_kernels.py::test_stage_attention_kernel",
      "each block of keys is summed without rescaling the accumulator to the new maximum"),
    P("stage-attention-config-ignored", "sdvar_lib/fast/run.py",
      'choice == "fused" or (', '(',
      "tests/test_fast_kernels.py::test_stage_attention_choice_and_its_pass",
      'stage_attention="fused" runs the q/k norm kernel and SDPA where the rule says no'),
    P("stage-attention-query-block-of-8", "sdvar_lib/fast/kernels/attention.py",
      "    return max(16, min(64, triton.next_power_of_2(l)))", "    return max(8, min(64, triton.next_power_of_2(l)))",
      "tests/test_kernel_targets.py",
      "a query block under tl.dot's smallest tile, which no GPU compiles (the interpreter computes it right)"),
    P("fused-stage-pays-always", "sdvar_lib/fast/fused.py",
      "    return rows_heads * l * (position + l) <= FUSED_STAGE_MAX_SCORES",
      "    return True",
      "tests/test_fast.py::test_fused_stage_attention_is_taken_where_it_was_measured_faster",
      "the fused kernel also at the last stages of batch 8 and 32, where it was measured slower"),
    P("calibration-times-cold-calls", "sdvar_lib/bench/calibration.py",
      "    in_call_context(ctx, True, lambda: call(seed - 1))\n    return call",
      "    return call",
      "tests/test_bench_calibration.py::test_calibration_times_no_call_that_prepares_its_programs",
      "the calibration times a call's first run, compiles and captures counted as per-step overhead"),
    P("bicubic-coefficient-a-half", "sdvar_lib/fast/kernels/bicubic.py",
      "def _cubic_far(x):  # cubic_convolution2: 1 < |x| < 2\n    A: tl.constexpr = -0.75",
      "def _cubic_far(x):  # cubic_convolution2: 1 < |x| < 2\n    A: tl.constexpr = -0.5",
      "tests/test_fast_kernels.py", "the outer taps with another cubic (a = -0.5, as some libraries use)"),
    P("bicubic-rows-not-clamped", "sdvar_lib/fast/kernels/bicubic.py",
      "    yy = tl.minimum(tl.maximum(in_y - 1 + k, 0), h - 1)", "    yy = tl.maximum(in_y - 1 + k, 0)",
      "tests/test_fast_kernels.py", "taps below the map read the next sample instead of the edge row"),
    P("bicubic-source-without-half-pixel", "sdvar_lib/fast/kernels/bicubic.py",
      "real_x = scale_w * (ox.to(tl.float32) + 0.5) - 0.5", "real_x = scale_w * ox.to(tl.float32)",
      "tests/test_fast_kernels.py", "align_corners-style source columns: the map shifted by a quarter pixel"),
    P("bicubic-output-contiguous", "sdvar_lib/fast/kernels/bicubic.py",
      "    y = torch.empty_strided((B, C, H, W), _output_strides(tuple(x.shape), x.stride(), (H, W)), dtype=x.dtype,\n"
      "                            device=x.device)",
      "    y = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device)",
      "tests/test_fast_kernels.py", "another layout than F.interpolate's: phi's convolution would take other kernels"),
    P("bicubic-layout-from-a-meta-tensor", "sdvar_lib/fast/kernels/bicubic.py",
      "    probe = torch.empty_strided(shape, stride).zero_()", '    probe = torch.empty_strided(shape, stride, device="meta")',
      "tests/test_fast_kernels.py::test_bicubic_output_layout_costs_no_heavy_import",
      "every process's first call imports PyTorch's meta registrations (2.7 s)"),
    P("upsample-check-tolerates-rounding", "sdvar_lib/fast/upsample.py",
      "            if not torch.equal(got, want):", "            if not torch.allclose(got, want):",
      "tests/test_fast_kernels.py", "a kernel one rounding off would replace PyTorch's in every f_hat"),
    P("upsample-verdict-asked-per-run", "sdvar_lib/fast/upsample.py",
      "@cache\ndef _triton_upsample(", "@__import__('functools').lru_cache(maxsize=0)\ndef _triton_upsample(",
      "tests/test_fast_kernels.py::test_triton_upsample_is_checked_once_per_device_and_sizes",
      "every run of every batch size checks the kernel again (start-up work, a warning per run)"),
    P("fast-acceptance-upsamples-with-pytorch", "sdvar_lib/fast/round.py",
      'quant.idx_to_h(si, st["tokens"]), upsample))', 'quant.idx_to_h(si, st["tokens"])))',
      "tests/test_fast_round.py::test_every_fast_f_hat_update_upsamples_with_the_runs_kernel",
      "the acceptance's corrected f_hat with another upsampling than the stage programs'"),
    P("whole-calls-do-not-prepare", "sdvar_lib/sdvar/decoder.py",
      "        if prepare is not None:  # e.g.", "        if False:  # e.g.",
      "tests/test_fast_precompile.py", "a first call would compile its kernels in phases, one run at a time"),
    P("precompile-launch-runs-inside-compile-ahead", "sdvar_lib/fast/kernels/precompile.py",
      "    if _MODE.get() is not None:", "    if False:",
      "tests/test_fast_precompile.py", "warm-ups would run their kernels one compile after another"),
    # ---- controls: harmless on purpose, must survive --------------------------------------------------------------
    P("control-docstring", "sdvar_lib/models/sampling.py",
      '"""Guidance at stage ``si``: ``cfg * si / (S - 1)``."""',
      '"""Guidance at stage ``si``: ``cfg * si / (S - 1)`` (a harmless edit)."""',
      "tests/test_acceptance_top1.py tests/test_sampling_reference.py", "a docstring edit", control=True),
    P("control-log-message", "sdvar_lib/sdvar/decoder.py",
      'log.debug("gamma rule %s never drafts: decoded with the target alone", gamma_rule.describe())',
      'log.debug("gamma rule %s never drafts (target alone)", gamma_rule.describe())',
      "tests/test_gamma.py", "a log message edit", control=True),
]


# ---- running --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    path: str
    expected: str
    result: str
    """``caught``, ``survived``, ``timeout``, ``error`` or ``skipped``."""
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result == self.expected or self.result == "skipped"


def repo_files(root: Path) -> list[str]:
    """The files a copy needs: git's tracked and untracked-but-not-ignored files (else every file but caches)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"], check=True,
                             capture_output=True).stdout
        return [p for p in out.decode().split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not skip & set(p.parts)]


def make_copy(root: Path, files: list[str], dest: Path) -> Path:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
    return dest


def fixtures_dir(root: Path) -> str | None:
    given = os.environ.get("SDVAR_FIXTURES")
    if given:
        return given
    shared = root.parent / "shared" / "fixtures"
    return str(shared) if shared.is_dir() else None


def pytest_env(copy: Path, root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    fixtures = fixtures_dir(root)
    if fixtures:
        env["SDVAR_FIXTURES"] = fixtures
    return env


FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


def run_pytest(python: str, copy: Path, tests: tuple[str, ...], env: dict, timeout: float,
               stop_first: bool = True) -> tuple[str, list[str], float, str]:
    """``(result, failed tests, seconds, last lines)``: result ``passed``, ``failed``, ``timeout`` or ``error``."""
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=no", *(["-x"] if stop_first else []),
           *tests]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group this run started (pytest and its children)
        out, _ = proc.communicate()
        return "timeout", [], time.perf_counter() - t0, out[-2000:]
    seconds = time.perf_counter() - t0
    failed = [m.group(1) for m in FAILED.finditer(out)]
    tail = "\n".join(out.strip().splitlines()[-5:])
    if proc.returncode == 0:
        return "passed", [], seconds, tail
    if proc.returncode in (1, 2) and failed:  # 2: interrupted by -x after a collection error
        return "failed", failed, seconds, tail
    return "error", failed, seconds, f"pytest exit status {proc.returncode}: {tail}"


def apply(copy: Path, plant: Plant) -> str:
    """Edit the copy; returns the original text (to restore)."""
    path = copy / plant.path
    text = path.read_text()
    n = text.count(plant.old)
    if n != 1:
        raise ValueError(f"plant {plant.name}: its old text occurs {n} times in {plant.path} (needs exactly 1)")
    path.write_text(text.replace(plant.old, plant.new))
    return text


def check_plants(plants: list[Plant], root: Path) -> list[str]:
    """Problems of the list against the tree at ``root`` (empty: every plant applies)."""
    problems, names = [], set()
    for p in plants:
        if p.name in names:
            problems.append(f"{p.name}: the name is used twice")
        names.add(p.name)
        path = root / p.path
        if not path.is_file():
            problems.append(f"{p.name}: {p.path} does not exist")
            continue
        n = path.read_text().count(p.old)
        if n != 1:
            problems.append(f"{p.name}: its old text occurs {n} times in {p.path} (needs exactly 1)")
        if p.old == p.new:
            problems.append(f"{p.name}: old and new are the same")
        if not p.tests:
            problems.append(f"{p.name}: no tests")
        for t in p.tests:
            if not (root / t.split("::")[0]).is_file():
                problems.append(f"{p.name}: test file {t.split('::')[0]} does not exist")
    return problems


def cuda_available(python: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                             text=True, timeout=300)
        return out.stdout.strip() == "True"
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_plants(plants: list[Plant], root: Path, python: str, jobs: int, timeout: float, baseline: bool,
               keep: bool = False, log=print) -> tuple[list[Outcome], list[str]]:
    """Every plant on its own copy; returns the outcomes (in the list's order) and the baseline's failures."""
    files = repo_files(root)
    work = Path(tempfile.mkdtemp(prefix="sdvar-mutate-"))
    try:
        copies: queue.Queue[Path] = queue.Queue()
        for j in range(max(1, min(jobs, len(plants)))):
            copies.put(make_copy(root, files, work / f"copy{j}"))
        gpu = any(p.gpu for p in plants) and cuda_available(python)
        if baseline:
            selection = tuple(dict.fromkeys(t for p in plants if gpu or not p.gpu for t in p.tests))
            copy = copies.get()
            log(f"baseline: {len(selection)} test selections on the unplanted copy ...")
            result, failed, seconds, tail = run_pytest(python, copy, selection, pytest_env(copy, root),
                                                       timeout * 4, stop_first=False)
            copies.put(copy)
            log(f"baseline: {result} in {seconds:.0f} s")
            if result != "passed":
                return [], failed or [tail]
        lock = threading.Lock()
        done = [0]

        def one(plant: Plant) -> Outcome:
            expected = "survived" if plant.control else "caught"
            if plant.gpu and not gpu:
                outcome = Outcome(plant.name, plant.path, expected, "skipped", detail="needs CUDA")
            else:
                copy = copies.get()
                try:
                    original = apply(copy, plant)
                    try:
                        result, failed, seconds, tail = run_pytest(python, copy, plant.tests, pytest_env(copy, root),
                                                                   timeout)
                    finally:
                        (copy / plant.path).write_text(original)
                finally:
                    copies.put(copy)
                kind = {"failed": "caught", "passed": "survived"}.get(result, result)
                outcome = Outcome(plant.name, plant.path, expected, kind, failed, seconds,
                                  "" if kind in ("caught", "survived") else tail)
            with lock:
                done[0] += 1
                mark = "ok " if outcome.ok else "!! "
                first = f" by {outcome.failed[0]}" if outcome.failed else ""
                log(f"[{done[0]}/{len(plants)}] {mark}{outcome.result:<8} {plant.name} ({outcome.seconds:.0f} s){first}")
            return outcome

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outcomes = list(pool.map(one, plants))
        return outcomes, []
    finally:
        if keep:
            log(f"copies kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# ---- reporting ------------------------------------------------------------------------------------------
def markdown(outcomes: list[Outcome], plants: dict[str, Plant]) -> str:
    lines = ["| # | plant | file | the bug | expected | result | first failing test | s |",
             "|---:|---|---|---|---|---|---|---:|"]
    for i, o in enumerate(outcomes, 1):
        result = o.result if o.ok else f"**{o.result}**"
        failed = f"`{o.failed[0]}`" + (f" (+{len(o.failed) - 1})" if len(o.failed) > 1 else "") if o.failed else o.detail
        lines.append(f"| {i} | `{o.name}` | `{o.path}` | {plants[o.name].why} | {o.expected} | {result} | "
                     f"{failed.replace('|', '/')} | {o.seconds:.0f} |")
    return "\n".join(lines)


def summary(outcomes: list[Outcome]) -> str:
    bugs = [o for o in outcomes if o.expected == "caught"]
    caught = [o for o in bugs if o.result == "caught"]
    skipped = [o for o in outcomes if o.result == "skipped"]
    wrong = [o for o in outcomes if not o.ok]
    text = f"{len(caught)} of {len(bugs) - len([o for o in bugs if o.result == 'skipped'])} bugs caught"
    if skipped:
        text += f", {len(skipped)} skipped ({', '.join(o.name for o in skipped)}: need CUDA)"
    controls = [o for o in outcomes if o.expected == "survived"]
    if controls:
        text += f"; controls surviving: {sum(o.result == 'survived' for o in controls)} of {len(controls)}"
    if wrong:
        text += "; NOT AS EXPECTED: " + ", ".join(f"{o.name} ({o.result})" for o in wrong)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/mutate.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the plants and exit")
    parser.add_argument("--check", action="store_true", help="check that every plant applies to this tree, run nothing")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run this plant (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="plants run at once, each in its own copy (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per plant (default 900)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unplanted run of the selections")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest (default: this one)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--json", default=None, help="also write the outcomes as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their path is printed)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    by_name = {p.name: p for p in PLANTS}
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        parser.error(f"unknown plant(s) {', '.join(unknown)}; see --list")
    plants = [by_name[n] for n in dict.fromkeys(args.only)] if args.only else list(PLANTS)
    if args.list:
        for p in plants:
            kind = "control" if p.control else "gpu" if p.gpu else "bug"
            print(f"{p.name:<36} {kind:<8} {p.path:<34} {' '.join(p.tests)}\n{'':<45}{p.why}")
        return 0
    problems = check_plants(plants, REPO)
    if args.check or problems:
        for line in problems:
            print(f"does not apply: {line}", file=sys.stderr)
        if args.check and not problems:
            print(f"all {len(plants)} plants apply to {REPO}")
        return 2 if problems else 0
    t0 = time.perf_counter()
    outcomes, baseline_failures = run_plants(plants, REPO, args.python, args.jobs, args.timeout, not args.no_baseline,
                                             args.keep, log=lambda line: print(line, file=sys.stderr, flush=True))
    if baseline_failures:
        print("the unplanted copy fails its selections, so no plant can be judged:", file=sys.stderr)
        for line in baseline_failures:
            print(f"  {line}", file=sys.stderr)
        return 2
    table = markdown(outcomes, by_name)
    print(table)
    print()
    print(f"{summary(outcomes)} ({time.perf_counter() - t0:.0f} s)")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n\n" + summary(outcomes) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
