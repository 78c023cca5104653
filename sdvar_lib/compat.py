"""The SDVAR research fork's API on the workbench: move a script over by renaming the module in its imports.

The fork's package is ``models``; here it is this module (``docs/MIGRATING.md``)::

    import sdvar_lib.compat as models        # the fork: import models (importlib.reload(models) works too)
    from sdvar_lib.compat import VQVAE, build_vae_var_speculative_decoding, build_vae_var
                                             # the fork: from models import ...

Everything else in such a script runs unchanged:

- :func:`build_vae_var_speculative_decoding` takes the fork's arguments (``V``, ``Cvae``, ``ch``,
  ``share_quant_resi``, ``device``, ``patch_nums``, ``num_classes``, ``depth_draft``,
  ``depth_target``, ``shared_aln``, ``similarity_thresh``, ...) and returns
  ``(vae, draft_var, target_var, sd_var)``; :func:`build_vae_var` is VAR's own factory
  (``(vae, var)``). The models' parameter names are the released checkpoints', so
  ``model.load_state_dict(torch.load(path), strict=True)`` loads the official files.
- :class:`SDVAR` is ``SDVAR(draft, target, similarity_thresh)``: the workbench's
  :class:`sdvar_lib.SDVAR` (every method and attribute of it) with the fork's third argument, the
  fork's entry points ``sdvar_autoregressive_infer_cfg_parallel_v1`` (with the fork's keyword
  arguments ``similarity_threshold``, ``max_retries``, ``verbose``) and
  ``sdvar_autoregressive_infer_cfg_sd_test3``, which return images and keep the whole output in
  :attr:`SDVAR.last_output`, and the fork's round-step names as aliases of the workbench's steps.

What the fork's arguments mean here:

- ``similarity_threshold`` (per call) or ``similarity_thresh`` (the constructor's default for every
  call) selects the fork's acceptance rule, ``top1_match`` with that threshold: a stage is accepted
  when that fraction of its draft tokens equals the target's argmax. The rule is **lossy**: the
  images no longer follow the target's distribution. Without either (or with an explicit
  ``policy="exact"``) calls use the workbench's default, ``exact``: token-wise speculative sampling,
  lossless. The first lossy call of an instance says so once, through :mod:`logging`.
- ``max_retries`` has no meaning here: every round commits at least one stage, so a call always
  finishes. It is accepted and ignored, with a one-time warning naming it.
- ``verbose=True`` logs a per-round trace through :mod:`logging` (``logging.basicConfig(level=logging.INFO)``
  shows it).
- the factory's ``flash_if_available``/``fused_if_available`` are accepted (attention always goes
  through PyTorch's SDPA); unlike the fork it leaves ``torch.nn``'s ``reset_parameters`` alone.

This module sits at the top of the package (it may import any layer; nothing imports it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from sdvar_lib.models.checkpoints import pick_device
from sdvar_lib.models.init import init_var_weights_
from sdvar_lib.models.presets import OFFICIAL_PATCH_NUMS
from sdvar_lib.models.run import RunFactory
from sdvar_lib.models.sampling import SamplingConfig
from sdvar_lib.models.var import VAR
from sdvar_lib.models.vqvae import VQVAE
from sdvar_lib.sdvar.acceptance import AcceptancePolicy, Top1MatchPolicy
from sdvar_lib.sdvar.decoder import SDVAR as _WorkbenchSDVAR
from sdvar_lib.sdvar.handoff import generate_test3
from sdvar_lib.sdvar.state import AcceptanceResult, CombinedQuery, DraftProposal, SDVARInferenceState, VerifyResult
from sdvar_lib.sdvar.stats import SDVAROutput
from sdvar_lib.util.checks import check_bool, check_int, check_int_sequence, check_number

log = logging.getLogger(__name__)

__all__ = ["VQVAE", "VAR", "SDVAR", "build_vae_var", "build_vae_var_speculative_decoding", "IGNORED_ARGUMENTS"]

IGNORED_ARGUMENTS = ("max_retries",)
"""The fork's call arguments that have no meaning on the workbench (accepted, ignored, warned about once)."""

_LOSSY_NOTE = (
    "similarity threshold {threshold}: using the SDVAR fork's acceptance rule top1_match (a stage is accepted "
    "when that fraction of its draft tokens equals the target's argmax). This rule is LOSSY: images do not "
    "follow the target's distribution. policy='exact' (the workbench default) is the lossless rule."
)


def _check_threshold(value, name: str) -> float | None:
    if value is None:
        return None
    return check_number(value, f"{name} (fraction of draft tokens that must match the target's argmax)", 0.0, 1.0,
                        min_inclusive=False)


class SDVAR(_WorkbenchSDVAR):
    """``SDVAR(draft_model, target_model, similarity_thresh=None)``: :class:`sdvar_lib.SDVAR` with the fork's names.

    ``similarity_thresh`` is the default ``top1_match`` threshold of the research entry points
    (``sdvar_autoregressive_infer_cfg_parallel_v1``, ``_initialize_inference_state``) when a call
    names neither a ``similarity_threshold`` nor a ``policy``; ``None`` keeps the lossless
    ``exact`` default. ``run_factory`` (keyword only) is :class:`sdvar_lib.SDVAR`'s, e.g. the fast path's
    :class:`sdvar_lib.fast.FastRunFactory`. Every method of :class:`sdvar_lib.SDVAR` behaves as there.

    The fork's entry points return images only; :attr:`last_output` holds the whole output (with
    its statistics) of this thread's latest entry-point call. The fork's round steps
    (``draft_generate_batch``, ``target_verify_batch``, ...) are aliases of the workbench's steps.
    """

    def __init__(
        self, draft_model: VAR, target_model: VAR, similarity_thresh: float | None = None, *,
        run_factory: RunFactory | None = None,
    ) -> None:
        super().__init__(draft_model, target_model, run_factory=run_factory)
        self.similarity_thresh = _check_threshold(similarity_thresh, "similarity_thresh")
        self._said: set[str] = set()
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def last_output(self) -> SDVAROutput | None:
        """The output (images, tokens, statistics) of this thread's latest research entry-point call."""
        return getattr(self._local, "output", None)

    def _images(self, out: SDVAROutput) -> torch.Tensor:
        self._local.output = out
        return out.images_B3HW

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message)

    def _research_policy(
        self, policy: str | AcceptancePolicy | None, similarity_threshold: float | None, max_retries, policy_kwargs: dict
    ) -> str | AcceptancePolicy:
        """The policy a research entry point runs: an explicit ``policy``, else the fork's threshold rule, else ``exact``."""
        given = {name: value for name, value in (("max_retries", max_retries),) if value is not None}
        if given:
            self._say_once("ignored", f"{', '.join(given)}: no meaning in sdvar_lib (every round commits at least one "
                                      "stage, so a call always finishes); ignored")
        threshold = _check_threshold(similarity_threshold, "similarity_threshold")
        if policy is not None:
            if threshold is not None:
                raise ValueError(
                    f"pass either similarity_threshold (the fork's top1_match rule) or policy, not both; got "
                    f"similarity_threshold={similarity_threshold!r} and policy={policy!r}"
                )
            return policy
        threshold = self.similarity_thresh if threshold is None else threshold
        if threshold is None:
            return "exact"
        if policy_kwargs:
            raise ValueError(f"the fork's top1_match rule takes no further options, got {sorted(policy_kwargs)}")
        self._say_once("lossy", _LOSSY_NOTE.format(threshold=threshold))
        return Top1MatchPolicy(threshold=threshold)

    # ---- the fork's entry points (images; the whole output in last_output) ----------------------------
    def sdvar_autoregressive_infer_cfg_parallel_v1(
        self, B: int, label_B=None, g_seed: int | None = None, cfg: float = 1.5, gamma=2, top_k: int = 0, top_p: float = 0.0,
        more_smooth: bool = False, similarity_threshold: float | None = None, max_retries: int | None = None,
        verbose: bool = False, policy: str | AcceptancePolicy | None = None, **policy_kwargs,
    ) -> torch.Tensor:
        """The fork's entry point (its positional order and keywords): images of :meth:`generate_parallel`."""
        chosen = self._research_policy(policy, similarity_threshold, max_retries, policy_kwargs)
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self._images(self.generate_parallel(B, label_B, g_seed, sampling, gamma, chosen, verbose, **policy_kwargs))

    def sdvar_autoregressive_infer_cfg_sd_test3(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, entry_num=None, sd_mask=0
    ) -> torch.Tensor:
        """Images of :func:`sdvar_lib.sdvar.handoff.generate_test3` (``entry_num=None``: every stage by the draft)."""
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self._images(generate_test3(self, B, label_B, g_seed, sampling, entry_num, sd_mask))

    # ---- the fork's round steps: aliases of the workbench's (B is checked against the state's) --------
    def _same_B(self, state: SDVARInferenceState, B: int) -> None:
        self._check_state(state)  # (a TypeError naming state before state.B is read; the step checks it again)
        if B != state.B:
            raise ValueError(f"B={B} does not match the inference state's batch size {state.B}")

    def _initialize_inference_state(
        self, B: int, label_B=None, g_seed=None, cfg=1.5, gamma=2, top_k=0, top_p=0.0, more_smooth=False,
        policy=None, verbose=False, similarity_threshold=None, max_retries=None, **policy_kwargs,
    ) -> SDVARInferenceState:
        """:meth:`prepare` with the policy chosen as in :meth:`sdvar_autoregressive_infer_cfg_parallel_v1`."""
        chosen = self._research_policy(policy, similarity_threshold, max_retries, policy_kwargs)
        sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self.prepare(B, label_B, g_seed, sampling, gamma, chosen, verbose, **policy_kwargs)

    def draft_generate_batch(self, state: SDVARInferenceState, B: int, verbose: bool = False,
                             gamma: int | None = None) -> DraftProposal:
        """Alias of :meth:`draft`."""
        self._same_B(state, B)
        return self.draft(replace(state, verbose=state.verbose or verbose), gamma)

    def _build_combined_query(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> CombinedQuery:
        """Alias of :meth:`verify_query`."""
        self._same_B(state, B)
        return self.verify_query(state, draft_tokens)

    def _get_attention_mask(self, state: SDVARInferenceState, query: CombinedQuery) -> torch.Tensor:
        """Alias of :meth:`verify_mask`."""
        return self.verify_mask(state, query)

    def target_verify_batch(self, draft_tokens: DraftProposal, state: SDVARInferenceState, B: int) -> VerifyResult:
        """Alias of :meth:`verify`."""
        self._same_B(state, B)
        return self.verify(state, draft_tokens)

    def _split_logits_by_stage(self, target_logits: torch.Tensor, draft_tokens: DraftProposal, B: int,
                               state: SDVARInferenceState) -> list[torch.Tensor]:
        """Alias of :meth:`split_logits`."""
        self._same_B(state, B)
        return self.split_logits(state, draft_tokens, target_logits)

    def basic_token_matching(self, draft_tokens: DraftProposal, verify: VerifyResult,
                             state: SDVARInferenceState) -> AcceptanceResult:
        """Alias of :meth:`accept` (it applies the state's policy, ``exact`` speculative sampling by default)."""
        return self.accept(state, draft_tokens, verify)

    def update_state_with_accepted_tokens(self, state: SDVARInferenceState, draft_tokens: DraftProposal,
                                          acceptance: AcceptanceResult) -> SDVARInferenceState:
        """Alias of :meth:`commit`."""
        return self.commit(state, draft_tokens, acceptance)


# ---- the factories ------------------------------------------------------------------------------
def _build_vae(device, patch_nums, V, Cvae, ch, share_quant_resi) -> VQVAE:
    check_int(V, "V (codebook size)", 1)
    check_int(Cvae, "Cvae (latent channels)", 1)
    check_int(ch, "ch (VQVAE base channels)", 32)
    check_int(share_quant_resi, "share_quant_resi", 0)
    with torch.device(device):
        return VQVAE(vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi,
                     v_patch_nums=tuple(patch_nums))


@dataclass(frozen=True)
class VarOptions:
    """The factories' keyword arguments of the VAR itself, beyond sizes (the upstream names and defaults)."""

    shared_aln: bool = False
    attn_l2_norm: bool = True
    flash_if_available: bool = True
    fused_if_available: bool = True
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1

    def __post_init__(self) -> None:
        for name in ("shared_aln", "attn_l2_norm", "flash_if_available", "fused_if_available"):
            check_bool(getattr(self, name), name)
        for name in ("init_adaln", "init_adaln_gamma", "init_head"):
            check_number(getattr(self, name), name, 0.0)
        if self.init_std != -1:
            raise ValueError(f"init_std must be -1 (the reference scheme, std sqrt(1 / (3 * width))), got {self.init_std!r}")


def _build_var(vae: VQVAE, device, depth: int, name: str, patch_nums, num_classes, opts: VarOptions) -> VAR:
    check_int(depth, name, 1)
    with torch.device(device):
        var = VAR(
            vae, num_classes=num_classes, depth=depth, embed_dim=depth * 64, num_heads=depth, mlp_ratio=4.0,
            drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24, norm_eps=1e-6, shared_aln=opts.shared_aln,
            cond_drop_rate=0.1, attn_l2_norm=opts.attn_l2_norm, patch_nums=tuple(patch_nums),
            flash_if_available=opts.flash_if_available, fused_if_available=opts.fused_if_available,
        )
    init_var_weights_(var, init_adaln=opts.init_adaln, init_adaln_gamma=opts.init_adaln_gamma, init_head=opts.init_head)
    return var


def _check_common(device, patch_nums, num_classes) -> torch.device:
    check_int_sequence(patch_nums, "patch_nums", 1)
    check_int(num_classes, "num_classes", 1)
    return pick_device(device)


def build_vae_var(device, patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS, V: int = 4096, Cvae: int = 32, ch: int = 160,
                  share_quant_resi: int = 4, num_classes: int = 1000, depth: int = 16, **var_options) -> tuple[VQVAE, VAR]:
    """VAR's factory: ``(vae, var)`` with width ``64 * depth`` and ``depth`` heads (the released presets at 16-30).

    ``var_options``: the upstream keywords ``shared_aln``, ``attn_l2_norm``, ``flash_if_available``,
    ``fused_if_available``, ``init_adaln``, ``init_adaln_gamma``, ``init_head``, ``init_std`` (:class:`VarOptions`).
    """
    opts = VarOptions(**var_options)
    device = _check_common(device, patch_nums, num_classes)
    vae = _build_vae(device, patch_nums, V, Cvae, ch, share_quant_resi)
    return vae, _build_var(vae, device, depth, "depth", patch_nums, num_classes, opts)


def build_vae_var_speculative_decoding(
    device, patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS, V: int = 4096, Cvae: int = 32, ch: int = 160,
    share_quant_resi: int = 4, num_classes: int = 1000, depth_draft: int = 16, depth_target: int = 30,
    similarity_thresh: float | None = None, *, same_weights_debug: bool = False, **var_options,
) -> tuple[VQVAE, VAR, VAR, SDVAR]:
    """The fork's factory: ``(vae, draft_var, target_var, sd_var)``, draft and target sharing one VQVAE.

    ``sd_var`` is :class:`SDVAR` ``(draft_var, target_var, similarity_thresh)`` (``None``: the lossless
    ``exact`` rule unless a call names a threshold). ``same_weights_debug=True`` copies the draft's
    weights into the target (depths must be equal), as in the fork. ``var_options`` as in :func:`build_vae_var`.
    """
    opts = VarOptions(**var_options)
    device = _check_common(device, patch_nums, num_classes)
    check_bool(same_weights_debug, "same_weights_debug")
    _check_threshold(similarity_thresh, "similarity_thresh")
    vae = _build_vae(device, patch_nums, V, Cvae, ch, share_quant_resi)
    draft = _build_var(vae, device, depth_draft, "depth_draft", patch_nums, num_classes, opts)
    target = _build_var(vae, device, depth_target, "depth_target", patch_nums, num_classes, opts)
    if same_weights_debug:
        if depth_draft != depth_target:
            raise ValueError(f"same_weights_debug=True copies the draft into the target, so depth_draft ({depth_draft}) "
                             f"must equal depth_target ({depth_target})")
        target.load_state_dict(draft.state_dict(), strict=True)
        log.info("same_weights_debug: target weights copied from the draft")
    return vae, draft, target, SDVAR(draft, target, similarity_thresh)
