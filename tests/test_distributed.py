"""``shiftaudit eval`` under torchrun with 2 gloo processes on the CPU writes the same JSON as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shiftaudit.engine.distributed import shard_indices
from shiftaudit.models import demo_checkpoint_path

ROOT = Path(__file__).resolve().parent.parent


def test_shards_cover_every_image_once():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            parts = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(np.concatenate(parts).tolist()) == list(range(n))


def _eval(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_torchrun_two_processes_give_the_single_process_json(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)  # odd: the shards differ in size
    np.savez(tmp_path / "data.npz", images=images, labels=rng.integers(0, 10, size=7))
    args = [
        "-m",
        "shiftaudit",
        "eval",
        str(demo_checkpoint_path()),
        "--data",
        "data.npz",
        "--max-shift",
        "3",
        "--device",
        "cpu",
        "--min-consistency",
        "0.1",
        "--exact",
    ]  # the full audit in both: the subject here
    one = _eval([sys.executable, *args, "--json", "one.json"], tmp_path)
    assert one.returncode in (0, 1), one.stderr
    two = _eval(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *args,
            "--json",
            "two.json",
            "--out",
            "report",
        ],
        tmp_path,
    )
    assert two.returncode == one.returncode, two.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a == b
    assert a["data"]["num_images"] == 7 and len(a["per_image"]["image_id"]) == 7
    assert two.stdout.count("gate:") + two.stderr.count("gate:") == 1  # only rank 0 reports
    assert not list(tmp_path.glob(".*.tmp"))
