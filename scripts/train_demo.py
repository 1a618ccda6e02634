"""Train the built-in demo CNN and write ``shiftaudit/assets/demo.safetensors``.

    .venv/bin/python scripts/train_demo.py                          # about 2-3 minutes on 2 CPU cores
    .venv/bin/python scripts/train_demo.py --antialias binomial5    # -> shiftaudit/assets/demo_aa.safetensors

``--antialias FILTER`` anti-aliases the same architecture BEFORE training (``patch_model`` with
``PatchConfig(filter=FILTER)``: blur before every subsampling, the paper's BlurPool) and trains it with exactly
the baseline's data, seed and schedule, so that ``shiftaudit demo --compare-antialiased`` compares like with like.
That checkpoint is written with :func:`shiftaudit.loading.save_model` and carries the patch spec, so
``load_model`` rebuilds the blurred architecture before loading the weights.

The model is trained WITHOUT shift augmentation on synthetic shapes (``shiftaudit.data.synthetic``), so that
``shiftaudit demo`` has an accurate model that is measurably not shift-invariant. The run is deterministic given
``--seed`` (and the thread count, fixed to 2). It reports test accuracy on the demo test images (seed
``DEMO_TEST_SEED``) and a quick sampled classification consistency (argmax agreement at two random circular shifts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shiftaudit.antialias import PatchConfig, patch_model
from shiftaudit.data.presets import Preprocessing
from shiftaudit.data.synthetic import make_synthetic
from shiftaudit.loading import save_model
from shiftaudit.models.demo import (
    DEMO_ARCH,
    DEMO_TEST_SEED,
    DEMO_TRAIN_SEED,
    demo_aa_checkpoint_path,
    demo_checkpoint_path,
    demo_cnn,
)

PREP = Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="demo")


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, the demo preprocessing (no resize or crop: images are 32x32)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PREP.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREP.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, pairs: int = 2) -> tuple[float, float]:
    """Top-1 accuracy, and sampled consistency: P[argmax agrees at two independent uniform circular shifts]."""
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    agree = []
    for _ in range(pairs):
        a = torch.randint(0, h, (len(x), 2), generator=g)
        b = torch.randint(0, h, (len(x), 2), generator=g)
        xa = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), (-2, -1)) for xi, s in zip(x, a)])
        xb = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), (-2, -1)) for xi, s in zip(x, b)])
        agree.append((model(xa).argmax(1) == model(xb).argmax(1)).float())
    return acc, torch.cat(agree).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed for initialisation and batch order")
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--test-images", type=int, default=1024)
    ap.add_argument(
        "--antialias",
        metavar="FILTER",
        default=None,
        help="anti-alias the model with this blur filter (e.g. binomial5) before training; "
        "default output becomes shiftaudit/assets/demo_aa.safetensors",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: the packaged demo.safetensors, or demo_aa.safetensors with --antialias)",
    )
    args = ap.parse_args()
    if args.out is None:
        args.out = demo_aa_checkpoint_path() if args.antialias else demo_checkpoint_path()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    imgs, labels, names = make_synthetic(args.train_images, seed=DEMO_TRAIN_SEED)
    x_train, y_train = to_input(imgs), torch.from_numpy(labels)
    timgs, tlabels, _ = make_synthetic(args.test_images, seed=DEMO_TEST_SEED)
    x_test, y_test = to_input(timgs), torch.from_numpy(tlabels)

    model = demo_cnn(len(names))
    patch_spec = None
    if args.antialias:
        # Patching adds only fixed blur buffers, so the random initialisation (and the RNG stream) matches the baseline.
        patched = patch_model(model, PatchConfig(filter=args.antialias, pad="circular"))
        model, patch_spec = patched.model, patched.spec
        print(f"anti-aliased with {patched.config.filter}: {', '.join(s.name for s in patched.patched)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc, cons = evaluate(model, x_test[:256], y_test[:256], seed=epoch)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / len(x_train):.3f}, test acc {acc:.3f}, "
            f"consistency {cons:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    train_s = time.perf_counter() - t0
    acc, cons = evaluate(model, x_test, y_test, seed=12345, pairs=4)
    print(f"final: test accuracy {acc:.4f}, sampled consistency {cons:.4f} on {len(x_test)} images; trained in {train_s:.0f} s")

    model.eval()
    info = {
        "seed": args.seed,
        "train_seed": DEMO_TRAIN_SEED,
        "test_seed": DEMO_TEST_SEED,
        "train_images": args.train_images,
        "epochs": args.epochs,
        "shift_augmentation": False,
        "test_accuracy": round(acc, 4),
        "sampled_consistency": round(cons, 4),
        "test_images": len(x_test),
        "train_seconds": round(train_s, 1),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if patch_spec is not None:
        info["filter"] = patch_spec["filter"]
        save_model(
            model,
            args.out,
            arch=DEMO_ARCH,
            num_classes=len(names),
            preprocessing=PREP,
            class_names=list(names),
            patch_spec=patch_spec,
            extra_metadata={"shiftaudit.train_info": json.dumps(info)},
        )
        args.out.chmod(0o644)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
        return
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "shiftaudit.format": "1",
        "shiftaudit.arch": DEMO_ARCH,
        "shiftaudit.num_classes": str(len(names)),
        "shiftaudit.preprocessing": json.dumps(PREP.to_json()),
        "shiftaudit.class_names": json.dumps(list(names)),
        "shiftaudit.train_info": json.dumps(info),
    }
    save_file(tensors, str(args.out), metadata=metadata)
    args.out.chmod(0o644)  # package data: readable by everyone
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
