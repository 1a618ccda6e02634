"""Settings for every test process: headless matplotlib, wide tables, one torch thread, the hypothesis profile; and
the fixtures several test files share: the test models of tests/helpers.py on sys.path with a tiny checkpoint and a
small ImageFolder (helpers live in tests/helpers.py, fixtures of one file in that file)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from hypothesis import settings
from safetensors.torch import save_file

from tests.helpers import (
    TINY_ENV_MODULE,
    TINY_FILES_MODULE,
    TINY_MODELS_MODULE,
    TINY_SETUP_MODULE,
    TinyFiles,
    signature_cache_dir,
    synthetic_result,
    tiny_models_on_path,
    write_image_folder,
    write_models_module,
)

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "200"  # wide rich tables, so CLI tests can read whole layer names
# `make mutate` forks a test process per mutant and asks for one thread (an OpenMP pool does not survive a fork)
# One thread per test process: pytest -n 2 already fills both cores, and two torch threads per worker on a busy
# 2-core machine spin instead of computing (measured: 10 s of CPU for an audit that takes 0.5 s with one thread).
torch.set_num_threads(int(os.environ.get("SHIFTAUDIT_TEST_THREADS", 1)))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same for the CLI runs tests start as subprocesses

# Property tests (docs/testing.md). "ci", the default (`make test`, .ci/run): derandomised, so a run draws the same
# examples on every machine and a failure does not depend on luck; no example database. "fuzz" (`make fuzz`, or
# `pytest --hypothesis-profile fuzz`): fresh randomness and ten times the examples, for exploration; a failure prints
# the @reproduce_failure blob to pin it. A test's own @settings(max_examples=examples(n)) scales with the profile
# (tests/helpers.py) and inherits derandomize from it: no test sets derandomize itself
# (tests/test_hypothesis_profiles.py checks both).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, deadline=None, print_blob=True, max_examples=1000)
settings.load_profile(os.environ.get("SHIFTAUDIT_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory):
    """A 3-class tiny model saved three ways, a 16x16 ImageFolder, and the models module on sys.path."""
    root = tmp_path_factory.mktemp("tiny-files")
    write_models_module(root / "pkgs", TINY_FILES_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "pkgs"))
        # identification's signature cache: one per test run (shared with the loading tests), never ~/.cache
        mp.setenv("SHIFTAUDIT_CACHE_DIR", str(signature_cache_dir(tmp_path_factory)))
        mod = __import__(TINY_FILES_MODULE)
        torch.manual_seed(0)
        model = mod.tiny(3).eval()
        pt = root / "tiny.pt"
        torch.save(model.state_dict(), pt)
        st = root / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
        ts = root / "tiny.torchscript.pt"
        torch.jit.script(model).save(str(ts))
        data = write_image_folder(root / "val")
        yield TinyFiles(root, pt, st, ts, data)
    sys.modules.pop(TINY_FILES_MODULE, None)


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a 3-class tiny checkpoint, a 16x16 ImageFolder (6 images) and a class map."""
    root = tmp_path_factory.mktemp("tiny-env")
    pkgs = root / "pkgs"
    write_models_module(pkgs, TINY_ENV_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(pkgs))
        mp.setenv("SHIFTAUDIT_CACHE_DIR", str(root / "cache"))
        mod = __import__(TINY_ENV_MODULE)
        torch.manual_seed(0)
        ckpt = root / "tiny.pt"
        torch.save(mod.tiny(3).state_dict(), ckpt)
        data = write_image_folder(root / "val")
        cmap = root / "map.json"
        cmap.write_text(json.dumps({"class_0": 0, "class_1": 1, "class_2": 2}))
        yield {"root": root, "pkgs": pkgs, "ckpt": ckpt, "data": data, "map": cmap, "mod": mod}
    sys.modules.pop(TINY_ENV_MODULE, None)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a tiny 3-class state dict, a 16x16 ImageFolder of 3 images, two reports."""
    root = tmp_path_factory.mktemp("tiny-setup")
    with tiny_models_on_path(root, TINY_SETUP_MODULE, classes=3, per_class=1) as (_, ckpt, data):
        reports = [
            synthetic_result(name="a").save_json(root / "a.json"),
            synthetic_result(0.1, name="b").save_json(root / "b.json"),
        ]
        yield root, ckpt, data, reports


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """The test models on sys.path, a tiny 3-class state dict and a 16x16 ImageFolder of 6 images."""
    with tiny_models_on_path(tmp_path_factory.mktemp("tiny-models"), TINY_MODELS_MODULE) as tiny_models:
        yield tiny_models
