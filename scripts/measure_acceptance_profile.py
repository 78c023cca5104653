"""Measure the per-stage stage acceptance of `exact` SDVAR on the bundled trained pair and print it as
the benchmark's ``--acceptance-profile`` for the official 10 stages.

    PYTHONPATH=. python scripts/measure_acceptance_profile.py [--calls 20] [--batch 8] [--device cpu]

Stage acceptance of a stage = judged proposals of that stage that every sample of the batch
accepted / judged proposals (``SDVARStats.accepted_stages_per_stage / proposed_stages_per_stage``),
pooled over the calls. SDVAR runs with gamma 2, cfg 1.5 and the library's default sampling
(``top_k=0``, ``top_p=0``: the full distribution). A bonus stage (sampled from the target after
every proposal was accepted) is never judged, so every other call starts with one target step
(gamma schedule ``(0, 2)``), which shifts the rounds by one stage; under the lossless ``exact``
policy a stage's acceptance does not depend on where the rounds start. A stage never judged takes
the nearest judged stage's value.

The bundled pair has fewer stages than the official models; stage ``s`` of 10 takes the bundled
stage ``t`` whose ``t / (S' - 1)`` is nearest to ``s / 9`` (``sdvar_lib.bench.map_profile_to_stages``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from sdvar_lib import SDVAR, Method, SamplingConfig
from sdvar_lib.bench import fill_missing_stages, map_profile_to_stages
from sdvar_lib.models import OFFICIAL_PATCH_NUMS, load_bundled
from sdvar_lib.sdvar import ExactPolicy, pooled_stage_acceptance


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gamma", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-shift", action="store_true", help="every call uses plain gamma (no shifted calls)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: small shared machines)")
    p.add_argument("--folder", default=None, help="bundled-model folder (default: sdvar_lib/assets/tiny_digits)")
    args = p.parse_args(argv)
    for name in ("calls", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.digits < 0 or args.seed < 0:
        p.error(f"--digits and --seed must be >= 0, got {args.digits} and {args.seed}")
    try:
        sampling = SamplingConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
        plain = Method(f"exact_g{args.gamma}", "sdvar", policy=ExactPolicy(), gamma=args.gamma)
        shifted = Method(f"exact_g0,{args.gamma}", "sdvar", policy=ExactPolicy(), gamma=(0, args.gamma))
    except (TypeError, ValueError) as exc:
        p.error(str(exc))

    torch.set_num_threads(args.threads)
    pair = load_bundled(args.device, folder=args.folder)
    sd = SDVAR(pair.draft, pair.target)
    S = pair.target.num_stages
    stats = []
    for i in range(args.calls):
        method = plain if args.no_shift or i % 2 == 0 else shifted
        stats.append(method.run(sd, args.batch, None, args.seed + i, sampling).stats)
    measured = pooled_stage_acceptance(stats)
    judged = [sum(st.proposed_stages_per_stage[s] for st in stats) for s in range(S)]
    token = [sum(st.accepted_tokens_per_stage[s] for st in stats) / max(1, sum(st.proposed_tokens_per_stage[s]
                                                                              for st in stats)) for s in range(S)]
    profile = map_profile_to_stages(fill_missing_stages(measured), len(OFFICIAL_PATCH_NUMS))
    mapping = map_profile_to_stages(tuple(float(t) for t in range(S)), len(OFFICIAL_PATCH_NUMS))

    print(f"model: {pair.description}; patch numbers {tuple(pair.target.patch_nums)}; device {args.device}")
    print(f"exact SDVAR, gamma {args.gamma}{'' if args.no_shift else ' (odd calls: schedule (0, gamma))'}, "
          f"cfg {args.cfg}, top_k {args.top_k}, top_p {args.top_p}; {args.calls} calls of batch {args.batch}")
    print("| stage | patch | judged proposals | stage acceptance | token acceptance |")
    print("|---|---|---|---|---|")
    for s in range(S):
        acc = "-" if measured[s] is None else f"{measured[s]:.3f}"
        print(f"| {s} | {pair.target.patch_nums[s]} | {judged[s]} | {acc} | {token[s]:.3f} |")
    print("official stage -> bundled stage: " + ", ".join(f"{s}->{int(t)}" for s, t in enumerate(mapping)))
    print("--acceptance-profile " + ",".join(f"{round(v, args.digits):g}" for v in profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
