"""Write the demo's synthetic images to disk for `shiftaudit patch` runs: a flat folder of unlabelled PNGs (for
--distill / --calibration-data) and a labelled .npz test set (for --data).

    python scripts/make_demo_images.py OUT_DIR [--unlabelled 1024] [--test 512]

The unlabelled images use the demo's training seed (1), the test set the demo's test seed (90210): disjoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from shiftaudit.data.synthetic import make_synthetic
from shiftaudit.models.demo import DEMO_TEST_SEED, DEMO_TRAIN_SEED


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--unlabelled", type=int, default=1024)
    ap.add_argument("--test", type=int, default=512)
    args = ap.parse_args()
    folder = args.out / "unlabelled"
    folder.mkdir(parents=True, exist_ok=True)
    images, _labels, _names = make_synthetic(args.unlabelled, seed=DEMO_TRAIN_SEED)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i:05d}.png")
    test, labels, _names = make_synthetic(args.test, seed=DEMO_TEST_SEED)
    np.savez(args.out / "test.npz", images=test, labels=labels)
    print(f"wrote {args.unlabelled} images to {folder} and {args.test} labelled test images to {args.out / 'test.npz'}")


if __name__ == "__main__":
    main()
