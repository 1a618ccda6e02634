"""The benchmark suite runs end to end (tiny mode) and writes the JSON structure RESULTS.md is read from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import run as bench


@pytest.mark.slow  # the whole benchmark suite (~35 s); `make bench` and CI run it
def test_tiny_benchmark_writes_every_section(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--tiny", "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["schema"] == "shiftaudit/bench" and result["mode"] == "tiny"
    assert {"device", "threads", "torch"} <= set(result["machine"])
    names = [c["name"] for c in result["cases"]]
    assert names[:2] == ["vgg13_cifar", "vgg13_cifar_circular"]
    for case in result["cases"]:
        for key in ("engine", "naive_shared", "naive_per_metric"):
            assert case[key]["pairs_per_s"] > 0
        assert case["naive_per_metric"]["passes"] == len(bench.NAIVE_METRICS) == 5 and case["naive_shared"]["passes"] == 1
        assert case["speedup_vs_naive_per_metric"] > 0
        eq = case["equal_batch"]
        assert eq["naive"]["batch"] == eq["engine"]["device_batch"] and eq["engine"]["strategy"] == "dense"
        assert eq["speedup"] > 0 and eq["engine_packed"]["forward_rows"] == eq["engine"]["forward_rows"]
    circular = result["cases"][1]
    assert circular["engine"]["strategy"] == "polyphase" and circular["shifts"] == 1024
    assert circular["engine_dense"]["strategy"] == "dense"
    early = result["early_exit"]
    assert early["identical_curve"] is True and early["early_exit"]["strategy"] == "early-exit"
    assert early["early_exit"]["forwards"] <= early["full"]["forwards"]
    assert {r["form"] for r in result["blurpool"]["rows"]} >= {"strided", "separable", "naive", "module"}
    assert set(result["summary"]) >= {
        "engine_vs_naive_per_metric",
        "polyphase_vs_naive_per_metric",
        "early_exit_forwards_saved",
        "blurpool_strided_vs_best_alternative",
        "blurpool_module_vs_best_third_party",
        "patched_vs_original",
        "engine_vs_naive_equal_batch",
    }
    rows = {(tuple(r["shape"]), r["filter"], r["pad"], r["form"]): r["ms"] for r in result["blurpool"]["rows"]}
    third = [(k, v) for k, v in rows.items() if k[3] in ("timm", "kornia", "antialiased_cnns")]
    if third:  # the layer's ratio is the worst over shapes of module / fastest third-party layer of that row
        worst = max(rows[(*k[:3], "module")] / min(v2 for k2, v2 in third if k2[:3] == k[:3]) for k, _ in third)
        assert result["summary"]["blurpool_module_vs_best_third_party"] == pytest.approx(worst, rel=1e-12)
    else:
        assert result["summary"]["blurpool_module_vs_best_third_party"] is None
    models = {r["model"] for r in result["patched"]["rows"]}
    assert models >= {"original", "patched", "patched_maxpool"}
    assert result["summary"]["patched_vs_original"]["1"] > 0
    seq = result["sequential"]["cases"][0]
    assert seq["name"] == "demo_zero_pad" and seq["rows"]
    for row in seq["rows"]:
        assert row["agreement"] == 1.0 and row["full_forwards"] == seq["images"] * seq["shifts"]
        assert row["forwards_ratio"] == row["full_forwards"] / row["median_forwards"]
    assert_backends_section(result["backends"])
    assert "wrote" in capsys.readouterr().out


def assert_backends_section(backends):
    """Each runtime's audit in the backends section has torch's predictions, and its export time is counted."""
    assert backends["backends"][0] == "torch" and backends["audits"]
    for case in [*backends["audits"], backends["all_shift"]]:
        assert case["rows"][0]["backend"] == "torch" and case["rows"][0]["speedup_vs_torch"] == 1.0
        for row in case["rows"][1:]:
            assert row["ran_on"] == row["backend"] and row["export_seconds"] > 0 and row["probe"]["top1_agreement"] == 1.0
            assert row["identical_predictions"] is True and row["max_float_diff"] < 1e-5
            assert row["seconds"] > row["export_seconds"]  # the whole audit call, export included
    every = backends["all_shift"]
    assert every["naive"]["batch"] == every["rows"][0]["device_batch"]
    assert backends["best_all_shift_vs_naive_equal_batch"] == max(r["speedup_vs_naive_equal_batch"] for r in every["rows"])
    defaults = backends["defaults"]
    assert defaults["before"]["backend"] == "torch" and defaults["identical_predictions"] is True
    assert defaults["images"] == 2  # the images audited (tiny mode; 12 in the default mode), not the cases' 1
    runtimes = backends["backends"][1:]
    assert [f["model"] for f in backends["forwards"]] == [a["model"] for a in backends["audits"]] + [every["model"]]
    for case in backends["forwards"]:
        labels = [r["backend"] for r in case["rows"]]
        assert labels == ["torch", *(x for n in runtimes for x in (n, f"{n} static"))]
        for r in case["rows"]:
            assert r["images_per_s"] == pytest.approx(case["batch"] / r["seconds_per_batch"])
            assert r["speedup_vs_torch"] == pytest.approx(case["rows"][0]["seconds_per_batch"] / r["seconds_per_batch"])


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu.py's code path at toy sizes on the CPU (what benchmarks/gpu.sh runs on a GPU)."""
    from benchmarks import gpu

    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] is True and result["demo_polyphase"]["engine"] == "polyphase"
    assert [c["model"].split()[0] for c in result["resnets"]] == ["resnet18", "resnet50"]
    assert all(c["achieved_tflops"] > 0 and c["pairs_per_s"] > 0 for c in result["resnets"])
    assert gpu.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.0 and gpu.datasheet_peak("cpu") is None


@pytest.mark.slow
def test_options_benchmark_reports_speed_and_drift(tmp_path):
    from benchmarks import options

    threads = torch.get_num_threads()
    try:
        assert options.main(["--quick", "--options", "bf16,channels_last", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "options.json").read_text())
    for r in result["results"]:
        assert r["fp32"]["max_abs_logit_diff"] == 0.0 and r["fp32"]["speedup_vs_fp32"] == 1.0
        assert 0.0 <= r["bf16"]["predictions_changed"] <= 1.0 and r["bf16"]["max_abs_logit_diff"] > 0
        assert r["channels_last"]["max_abs_logit_diff"] < 1e-3


def test_between_image_share_is_the_variance_stratification_can_remove():
    from benchmarks.stratification import between_image_share

    # per-image consistencies 1 and 0.5: mean 0.75, Var_i 0.0625, one indicator's variance 0.1875
    assert between_image_share(np.array([1.0, 0.5])) == pytest.approx(1 / 3, abs=1e-15)
    assert between_image_share(np.array([0.75, 0.75, 0.75])) == 0.0  # all images alike: nothing between them
    assert between_image_share(np.array([1.0, 1.0])) == 0.0  # no variance at all
