"""Fine-tuning throughput under torchrun (issue 26): images per second per process of ``shiftaudit patch --distill``.

    python -m benchmarks.finetune_bench --out DIR [--dry-run] [--procs N] [--steps S] [--batch B] [--size PX]

Builds resnet18 with random weights (nothing is downloaded) and synthetic images, then runs ``python -m
torch.distributed.run --nproc-per-node N -m shiftaudit patch ... --distill ... --precision bf16`` and reads the
patch report: the training seconds, steps and global batch give images/s in all and per process. On a GPU machine
N is the GPU count (nccl, bf16 autocast); ``--dry-run`` runs 2 gloo processes on the CPU at toy sizes in fp32, so
the DDP path is proven where no GPU is lent. Writes ``gpu-finetune.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--procs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    a = ap.parse_args()
    gpu = torch.cuda.is_available() and not a.dry_run
    procs = a.procs or (torch.cuda.device_count() if gpu else 2)
    steps, batch, size = a.steps or (30 if gpu else 2), a.batch or (256 if gpu else 4), a.size or (224 if gpu else 32)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from safetensors.torch import save_file

        save_file(torchvision.models.resnet18(num_classes=1000).state_dict(), work / "r18.safetensors")
        n = max(2 * batch, int(batch * 1.25) + 8)  # held-out share (20 %) leaves at least one batch to train on
        rng = np.random.default_rng(0)
        np.savez(work / "images.npz", images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "shiftaudit",
            "patch", str(work / "r18.safetensors"), "--arch", "resnet18", "--distill", str(work / "images.npz"),
            "--train-steps", str(steps), "--train-batch", str(batch), "--eval-every", "0", "--raw", "--size", str(size),
            "--device", "cuda" if gpu else "cpu", "--precision", "bf16" if gpu else "fp32", "--workers", "0",
            "--json", str(work / "patch.json"), "--quiet",
        ]  # fmt: skip
        t0 = time.monotonic()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
        d = json.loads((work / "patch.json").read_text())["distill"]
    images = d["steps"] * d["batch_size"]
    row = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run: measures nothing)",
        "processes": d["processes"], "precision": d["settings"]["precision"], "image_size": size, "global_batch": d["batch_size"],
        "steps": d["steps"], "train_seconds": d["seconds"], "wall_seconds_with_start_up": wall,
        "images_per_s": images / d["seconds"], "images_per_s_per_process": images / d["seconds"] / d["processes"],
        "torch": torch.__version__,
    }  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu-finetune.json").write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
