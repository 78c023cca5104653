#!/usr/bin/env python3
"""Images/s of ``python -m sdvar_lib.sample`` on 1 GPU and under torchrun on N GPUs, and whether the sets agree.

For every method it runs the sampler twice with the same arguments -- one process, then
``torchrun --standalone --nproc-per-node N`` -- compares the two ``samples.npz`` byte for byte,
and reports images/s (from each run's ``stats.json``: images of the session over the slowest
rank's wall time after setup and graph capture), the scaling, and the wall time a 50,000-image set
would take on one GPU and on 8 (extrapolated from the measurement; marked as such).

On the device (one ``nvidia-h200-x2`` call, about 6-8 minutes; nothing is downloaded)::

    python3 scripts/device_sample_scaling.py --report $OUT

On a CPU with the bundled pair (what the tests run; gloo)::

    python scripts/device_sample_scaling.py --models bundled --device cpu --methods exact_g2 \\
        --classes 0-4 --per-class 1 --batch-size 2 --work /tmp/scaling --report /tmp/scaling/report

Writes ``scaling.json`` and ``scaling.md`` into ``--report``; exits 1 if a run failed or a pair of
sets differs. Only numpy is imported here (the runs are subprocesses).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FULL_SET = 50_000
# keep NVLink multicast off (the device's rule), also for the processes torchrun starts
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="random-official", help="sampler --models (default random-official)")
    p.add_argument("--methods", default="target,exact_adaptive", help="comma-separated methods (default target,exact_adaptive)")
    p.add_argument("--classes", default="0-999", help="sampler --classes (default 0-999: 1,000 images at --per-class 1)")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gpus", type=int, default=2, help="processes of the torchrun run (default 2)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (gloo; for testing the script)")
    p.add_argument("--work", default="/tmp/sdvar-scaling", help="folder of the sample sets (replaced)")
    p.add_argument("--report", default=None, help="folder for scaling.json and scaling.md (default: --work)")
    p.add_argument("--timeout", type=int, default=135,
                   help="seconds per sampler run (default 135: four runs stay inside one 10-minute device call)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    return p


def sampler_args(args, method: str, out: Path) -> list[str]:
    cmd = ["-m", "sdvar_lib.sample", "--models", args.models, "--method", method, "--classes", args.classes,
           "--per-class", str(args.per_class), "--batch-size", str(args.batch_size), "--device", args.device,
           "--out", str(out), "--no-progress"]
    if args.device == "cpu":
        cmd += ["--threads", "1"]
    return cmd


def run(cmd: list[str], env: dict, timeout: int) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        out, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {timeout} s", 124
    return rc, time.perf_counter() - t0, out


def same_set(a: Path, b: Path) -> bool:
    """Byte-equal files, checked array by array too (images and labels)."""
    with np.load(a) as za, np.load(b) as zb:
        arrays = set(za.files) == set(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files)
    return arrays and sha256(a) == sha256(b)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work)
    report = Path(args.report) if args.report else work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    report.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({k: env.get(k, v) for k, v in SAFE_ENV.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    rows, ok = [], True
    t_start = time.perf_counter()
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        row = dict(method=method)
        for label, launcher in (("1", [args.python]),
                                (str(args.gpus), [args.python, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", str(args.gpus)])):
            out = work / f"{method}-w{label}"
            rc, seconds, text = run(launcher + sampler_args(args, method, out), env, args.timeout)
            print(f"== {method}, {label} process(es): rc {rc}, {seconds:.1f} s", flush=True)
            print("\n".join(text.strip().splitlines()[-6:]), flush=True)
            if rc != 0:
                ok = False
                row[f"error_w{label}"] = text.strip().splitlines()[-1:]
                continue
            stats = json.loads((out / "stats.json").read_text())
            s = stats["session"]
            row[f"w{label}"] = dict(images_per_s=s["images_per_s"], wall_time_s=s["wall_time_s"], setup_s=s["setup_s"],
                                    images=s["images"], process_s=seconds, per_rank=[r["images_per_s"] for r in s["per_rank"]])
            row["target_passes_per_image"] = stats["decoder_stats"]["target_passes_per_image"]
            row["pair"] = stats["pair"]
            row["devices"] = sorted({r["device"] for r in s["per_rank"]})
        w1, wn = row.get("w1"), row.get(f"w{args.gpus}")
        if w1 and wn:
            row["scaling"] = wn["images_per_s"] / w1["images_per_s"]
            row["same_set"] = same_set(work / f"{method}-w1" / "samples.npz", work / f"{method}-w{args.gpus}" / "samples.npz")
            ok &= row["same_set"]
            efficiency = row["scaling"] / args.gpus
            row["extrapolated_50k_s"] = {"1 GPU": FULL_SET / w1["images_per_s"],
                                         "8 GPUs": FULL_SET / (w1["images_per_s"] * 8 * min(efficiency, 1.0))}
        rows.append(row)

    devices = sorted({d for r in rows for d in r.get("devices", [])})
    lines = [f"Sampler scaling: --models {args.models}, --batch-size {args.batch_size}, classes {args.classes} x "
             f"{args.per_class}, {args.gpus} processes under torchrun; devices {', '.join(devices) or args.device}.", "",
             f"| method | images/s, 1 process | images/s, {args.gpus} processes | scaling | same set | target passes / image "
             f"| 50k images, 1 GPU (extrapolated) | 50k images, 8 GPUs (extrapolated) |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        w1, wn = r.get("w1"), r.get(f"w{args.gpus}")
        ext = r.get("extrapolated_50k_s", {})
        lines.append(
            f"| {r['method']} | {w1['images_per_s']:.2f} |" if w1 else f"| {r['method']} | FAILED |")
        lines[-1] += (f" {wn['images_per_s']:.2f} |" if wn else " FAILED |")
        lines[-1] += (f" {r['scaling']:.3f}x | {'yes' if r['same_set'] else 'NO'} | {r['target_passes_per_image']:.3f} | "
                      f"{hms(ext['1 GPU'])} | {hms(ext['8 GPUs'])} |" if "scaling" in r else " - | - | - | - | - |")
    lines += ["", "images/s: images of the session / the slowest rank's wall time after setup (model build, graph capture, "
              "one warm-up call); the 8-GPU figure assumes the measured per-GPU efficiency of the "
              f"{args.gpus}-process run. Total script time {time.perf_counter() - t_start:.0f} s."]
    text = "\n".join(lines)
    print()
    print(text)
    write_atomic(report / "scaling.md", text + "\n")
    write_atomic(report / "scaling.json", json.dumps(dict(args=vars(args), rows=rows, ok=ok), indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
