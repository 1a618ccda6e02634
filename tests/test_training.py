"""Issue 26 part 2: the fine-tuning trainer (shiftaudit.training).

Properties that fail when a number is wrong: the first step's loss equals a hand computation; a step's draws do not
depend on how the batch is split; accumulation and 2-process DDP (gloo) equal one process with the same global batch;
a run stopped by SIGTERM and resumed equals an uninterrupted one, bit for bit; the time budget is kept; the best
evaluation's weights are the ones returned; patience stops; the schedule has its shape; a saved state refuses a
changed run and a crafted file.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftaudit.data import load_data
from shiftaudit.errors import TrainingInterrupted, UsageError
from shiftaudit.training import TrainConfig, finetune, heldout_split
from shiftaudit.training.draws import roll_each, sample_keys, step_positions, views
from shiftaudit.training.loop import schedule_factor


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def tiny_data(n: int = 40, seed: int = 0, labelled: bool = True):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 12, 12, generator=g)
    if not labelled:
        return load_data(images, raw=True)
    return load_data((images, torch.randint(0, 5, (n,), generator=g)), raw=True)


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().float() for v in model.state_dict().values()])


CONFIG = dict(steps=6, seconds=None, batch_size=8, lr=1e-2, eval_every=3, seed=5)


def run(config: dict, data=None, student_seed: int = 1, **kw):
    teacher, student = tiny_net(0), tiny_net(student_seed)
    result = finetune(teacher, student, data if data is not None else tiny_data(), TrainConfig(**config), **kw)
    return result, student


# -- draws ----------------------------------------------------------------------------------------------------------


def test_a_steps_draws_do_not_depend_on_how_the_batch_is_split():
    images = torch.rand(8, 3, 10, 10)
    keys = sample_keys(4, 8, torch.arange(8))
    for augment in ("none", "flip", "crop", "crop+flip"):
        whole = views(images, keys, 3, None, augment)
        halves = [views(images[s], keys[s], 3, None, augment) for s in (slice(0, 3), slice(3, 8))]
        for i in range(2):
            assert torch.equal(whole[i], torch.cat([h[i] for h in halves])), augment
    shown, shifted = views(images, keys, 3, 2, "none")
    assert torch.equal(shown, images)
    assert any(torch.equal(shifted[0], torch.roll(images[0], (a, b), (-2, -1))) for a in range(-2, 3) for b in range(-2, 3))


def test_epochs_visit_every_training_image_once_and_batches_are_seeded():
    n, b = 20, 6
    epoch0 = torch.cat([step_positions(n, b, 7, s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 18  # the last partial batch of 2 is left out
    assert not torch.equal(step_positions(n, b, 7, 3), step_positions(n, b, 7, 0))  # a new permutation per epoch
    assert torch.equal(step_positions(n, b, 7, 4), step_positions(n, b, 7, 4))


def test_the_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    f = schedule_factor(TrainConfig(steps=10, warmup=2), 10)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert schedule_factor(TrainConfig(steps=None, seconds=5.0), None)(50) == 1.0  # no horizon: constant
    assert schedule_factor(TrainConfig(steps=10, schedule="constant"), 10)(9) == 1.0


# -- the loss -------------------------------------------------------------------------------------------------------


def test_the_first_steps_loss_equals_a_hand_computation():
    data = tiny_data()
    c = TrainConfig(steps=1, seconds=None, batch_size=8, eval_every=0, ce_weight=0.25, temperature=2.0, max_shift=3, seed=2)
    teacher, student = tiny_net(0), tiny_net(1)
    reference = tiny_net(1)
    result = finetune(teacher, student, data, c)
    train, _ = heldout_split(len(data), c.seed)
    pos = [train[int(p)] for p in step_positions(len(train), 8, c.seed, 0)]
    x = torch.stack([data[i][0] for i in pos])
    y = torch.tensor([data[i][1] for i in pos])
    shown, shifted = views(x, sample_keys(0, 8, torch.arange(8)), c.seed, 3, "none")
    with torch.no_grad():
        t = F.softmax(teacher(shown) / 2.0, 1)
        s_out = reference(shifted)
        kd = (t * (t.log() - F.log_softmax(s_out / 2.0, 1))).sum(1) * 4.0
        expected = (0.75 * kd + 0.25 * F.cross_entropy(s_out, y, reduction="none")).mean()
    assert result.loss_first == pytest.approx(float(expected), rel=1e-5)


# -- equal results however the batch is computed --------------------------------------------------------------------


def test_accumulation_equals_one_big_batch():
    one, s1 = run(CONFIG)
    acc, s2 = run({**CONFIG, "accumulate": 4})
    assert torch.allclose(weights(s1), weights(s2), atol=1e-5)
    assert [h["agreement"] for h in one.history] == [h["agreement"] for h in acc.history]
    assert [h["loss"] for h in one.history[1:]] == pytest.approx([h["loss"] for h in acc.history[1:]], abs=1e-6)
    assert one.loss_first == pytest.approx(acc.loss_first, rel=1e-6)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result, student = run(CONFIG)
    if rank == 0:
        torch.save(
            {"weights": weights(student), "history": result.history, "processes": result.processes, "first": result.loss_first},
            out,
        )
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = torch.load(out)
    single, student = run(CONFIG)
    assert got["processes"] == 2 and single.processes == 1
    assert got["first"] == pytest.approx(single.loss_first, rel=1e-6)
    assert torch.allclose(got["weights"], weights(student), atol=1e-5)
    assert [h["consistency"] for h in got["history"]] == [h["consistency"] for h in single.history]
    assert [h["loss"] for h in got["history"][1:]] == pytest.approx([h["loss"] for h in single.history[1:]], abs=1e-6)


# -- resume ---------------------------------------------------------------------------------------------------------


def test_the_progress_bar_counts_steps_and_is_given_back_counting_images():
    class Bar:
        unit = "images"

        def __init__(self):
            self.calls = []

        def start(self, total, description):
            self.calls.append((self.unit, total))

        def advance(self, n):
            pass

        def stop(self):
            pass

    bar = Bar()
    run({**CONFIG, "steps": 2}, progress=bar)
    assert bar.calls == [("steps", 2)] and bar.unit == "images"  # the audits after fine-tuning count images again


class SignalAt:
    """A progress object that sends ``signum`` to this process once ``step`` steps are done."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.done = step, signum, 0

    def start(self, total, description):
        pass

    def advance(self, n):
        self.done += n
        if self.done == self.step:
            os.kill(os.getpid(), self.signum)

    def stop(self):
        pass


def test_a_run_stopped_by_sigterm_and_resumed_equals_an_uninterrupted_one(tmp_path):
    state = tmp_path / "state.safetensors"
    config = {**CONFIG, "steps": 7, "ema": 0.8, "warmup": 2, "weight_decay": 0.01}
    with pytest.raises(TrainingInterrupted) as stopped:
        run(config, resume=state, progress=SignalAt(4))
    assert stopped.value.terminated and stopped.value.done == 4 and stopped.value.resume_path == str(state)
    resumed, s_resumed = run(config, resume=state)
    whole, s_whole = run(config)
    assert resumed.resumed_at_step == 4 and resumed.steps == whole.steps == 7
    assert torch.equal(weights(s_resumed), weights(s_whole))
    assert resumed.history == whole.history and resumed.best_step == whole.best_step
    again, s_again = run(config, resume=state)  # a finished run's state gives the same answer again
    assert torch.equal(weights(s_again), weights(s_whole)) and again.steps == 7


def test_a_saved_state_refuses_a_changed_run_and_a_crafted_file(tmp_path):
    state = tmp_path / "state.safetensors"
    run({**CONFIG, "steps": 3}, resume=state)
    with pytest.raises(UsageError, match=r"--lr changed since the run saved in .*state.safetensors \(was 0.01, now 0.02\)"):
        run({**CONFIG, "steps": 3, "lr": 0.02}, resume=state)
    with pytest.raises(UsageError, match="starting weights"):
        run({**CONFIG, "steps": 3}, resume=state, student_seed=2)
    state.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": "b"}' + b"      ")
    with pytest.raises(UsageError, match="not a shiftaudit fine-tuning state"):
        run(CONFIG, resume=state)
    os.remove(state)
    os.mkfifo(state)
    with pytest.raises(UsageError, match="not a regular file"):
        run(CONFIG, resume=state)


# -- budgets, best, patience ----------------------------------------------------------------------------------------


class Slow(nn.Module):
    """The tiny net, slowed so that a step takes about ``delay`` seconds."""

    def __init__(self, delay: float, seed: int) -> None:
        super().__init__()
        self.net, self.delay = tiny_net(seed), delay

    def forward(self, x):
        if torch.is_grad_enabled():
            time.sleep(self.delay)
        return self.net(x)


def test_the_time_budget_ends_the_run_before_its_deadline_not_a_step_after():
    teacher, student = tiny_net(0), Slow(0.4, 1)
    c = TrainConfig(steps=None, seconds=1.0, batch_size=8, eval_every=0)
    result = finetune(teacher, student, tiny_data(), c)
    # steps end at about 0.4 and 0.8 s; a third would end at 1.2 s, so it is not started
    assert result.stopped_by == "seconds" and result.steps == 2 and result.seconds <= 1.0


def test_the_best_evaluations_weights_are_kept():
    result, student = run({**CONFIG, "lr": 0.5, "steps": 8, "eval_every": 2})  # a large rate: later steps may get worse
    scores = [(h["accuracy"] if h["accuracy"] is not None else h["agreement"]) + h["consistency"] for h in result.history]
    best = result.history[int(np.argmax(scores))]
    assert result.best_step == best["step"] and result.agreement_after == best["agreement"]
    from shiftaudit.training.heldout import HeldOut

    data = tiny_data()
    _, held = heldout_split(len(data), CONFIG["seed"])
    again = HeldOut(data, held, tiny_net(0), seed=CONFIG["seed"], max_shift=None, batch_size=8, device=torch.device("cpu"))
    assert again.evaluate(student, -1).consistency == best["consistency"]


def test_patience_stops_a_run_that_no_longer_improves():
    result, student = run({**CONFIG, "lr": 1e-12, "steps": 50, "eval_every": 1, "patience": 2})
    assert result.stopped_by == "no improvement" and result.steps == 2 and result.best_step == 0
    assert torch.equal(weights(student), weights(tiny_net(1)))  # step 0 was best: the starting weights come back


def test_settings_that_cannot_train_are_refused_before_any_image_is_read():
    for bad, match in (
        (dict(steps=None, seconds=None), "budget"),
        (dict(batch_size=6, accumulate=4), "multiple of `accumulate`"),
        (dict(ema=1.0), "between 0 and 1"),
        (dict(precision="fp16"), "bf16"),
        (dict(augment="mixup"), "augment"),
    ):
        with pytest.raises(UsageError, match=match):
            TrainConfig(**bad)
    small, _ = run({**CONFIG, "batch_size": 64, "accumulate": 4, "steps": 1})
    assert small.batch_size == 32 and small.notes == ["the batch of 64 was lowered to 32: there are 32 training images"]
    with pytest.raises(UsageError, match="fewer than one batch of 8"):
        run({**CONFIG, "batch_size": 8, "accumulate": 8}, data=tiny_data(n=6))
    assert math.isfinite(run({**CONFIG, "steps": 1})[0].loss_first)


def test_unreadable_held_out_and_roll_each_edge_cases():
    empty = torch.empty(0, 3, 4, 4)
    assert roll_each(empty, np.zeros((0, 2), dtype=np.int64)).shape == (0, 3, 4, 4)
