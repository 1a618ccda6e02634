"""Distil the patched demo model once and print held-out and test agreement: used to choose frozen vs train-mode BatchNorm.

python scripts/distill_bn_choice.py FILTER {frozen,train} LR STEPS
"""

import sys
import time

import torch

from shiftaudit.antialias import PatchConfig, distill, patch_model, top1_agreement
from shiftaudit.cli.demo_cmd import demo_dataset
from shiftaudit.loading import load_model
from shiftaudit.models.demo import DEMO_TRAIN_SEED, demo_checkpoint_path

torch.set_num_threads(1)
base = load_model(demo_checkpoint_path())
test = demo_dataset(256, base.preprocessing)
unl = demo_dataset(512, base.preprocessing, seed=DEMO_TRAIN_SEED)
filt, bn, lr, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
p = patch_model(base.model, PatchConfig(filter=filt, pad="circular"))
t = time.time()
d = distill(base.model, p.model, unl, steps=steps, seconds=300, seed=0, lr=lr, bn=bn)
print(
    filt,
    bn,
    lr,
    d.steps,
    round(d.seconds, 1),
    round(d.agreement_before, 3),
    round(d.agreement_after, 3),
    round(d.shifted_agreement_before, 3),
    round(d.shifted_agreement_after, 3),
    round(d.loss_first, 3),
    round(d.loss_last, 3),
)
print("test agreement", top1_agreement(base.model, p.model, test))
