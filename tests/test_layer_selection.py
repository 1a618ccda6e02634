"""The feature maps ``--layers auto|all|names`` measures, pinned whole for small known models (Fig. 4's choice)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from shiftaudit.antialias import patch_model
from shiftaudit.errors import UsageError
from shiftaudit.metrics.layers import _dense_pool_input, select_layers


def _seq() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.MaxPool2d(2, (2, 2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _triples(model: nn.Module, spec: str, size: int, channels: int = 3) -> list[tuple[str, str, str]]:
    return [(s.name, s.module, s.where) for s in select_layers(model, spec, (size, size), channels)]


def test_auto_on_a_sequential_net():
    # the stride-1 max-pool (2) is no downsampling point; the strided conv's input is measured, not the stem's
    assert _triples(_seq(), "auto", 16) == [
        ("pixels", "", "input"),
        ("3 Conv2d (in)", "3", "input"),
        ("3 Conv2d (ds)", "3", "output"),
        ("4 MaxPool2d (in)", "4", "input"),
        ("4 MaxPool2d (dense)", "4", "dense"),
        ("4 MaxPool2d (ds)", "4", "output"),
        ("5 AdaptiveAvgPool2d (pooled)", "5", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


def test_auto_on_resnet18_skips_the_stem_input_and_the_shortcut_inputs():
    model = torchvision.models.resnet18(num_classes=10).eval()
    got = _triples(model, "auto", 32)
    assert got[:5] == [
        ("pixels", "", "input"),
        ("conv1 (ds)", "conv1", "output"),  # the stem's input is the pixels: not measured twice
        ("maxpool (in)", "maxpool", "input"),
        ("maxpool (dense)", "maxpool", "dense"),
        ("maxpool (ds)", "maxpool", "output"),
    ]
    for stage in (2, 3, 4):  # each stage: the main path's input and output, the shortcut's output only
        i = got.index((f"layer{stage}.0.conv1 (in)", f"layer{stage}.0.conv1", "input"))
        assert got[i + 1 : i + 3] == [
            (f"layer{stage}.0.conv1 (ds)", f"layer{stage}.0.conv1", "output"),
            (f"layer{stage}.0.downsample.0 Conv2d (ds)", f"layer{stage}.0.downsample.0", "output"),
        ]
    assert len(got) == 16 and got[-2:] == [("logits", "<logits>", "output"), ("softmax", "<softmax>", "output")]


def test_auto_on_a_patched_net_measures_around_each_blur():
    patched = patch_model(_seq()).model
    assert _triples(patched, "auto", 16) == [
        ("pixels", "", "input"),
        ("3.blur (in)", "3.blur", "input"),
        ("3.blur (ds)", "3.blur", "output"),
        ("4.blur (in)", "4.blur", "input"),  # the MaxBlurPool's stride-1 max: the dense part
        ("4.blur (ds)", "4.blur", "output"),
        ("5 AdaptiveAvgPool2d (pooled)", "5", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


def test_all_takes_every_leaf_conv_and_pool():
    assert _triples(_seq(), "all", 16) == [
        ("pixels", "", "input"),
        ("0 Conv2d", "0", "output"),
        ("2 MaxPool2d", "2", "output"),
        ("3 Conv2d", "3", "output"),
        ("4 MaxPool2d", "4", "output"),
        ("5 AdaptiveAvgPool2d", "5", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


def test_named_layers_keep_their_order_and_names_without_a_type_when_not_numbered():
    model = torchvision.models.resnet18(num_classes=10).eval()
    assert _triples(model, " layer2.0.conv1 ,maxpool,,", 32) == [
        ("pixels", "", "input"),
        ("layer2.0.conv1", "layer2.0.conv1", "output"),
        ("maxpool", "maxpool", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]
    assert _triples(model, ["layer1"], 32)[1] == ("layer1", "layer1", "output")


def test_unknown_layer_messages():
    model = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(UsageError) as err:
        select_layers(model, "layer9,maxpool", (32, 32))
    assert str(err.value) == "The model has no layer named 'layer9'; did you mean layer4, layer3, layer2?"
    with pytest.raises(UsageError) as err:
        select_layers(model, "zzzzzz", (32, 32))
    assert str(err.value) == "The model has no layer named 'zzzzzz'; `shiftaudit inspect` lists the layers."
    with pytest.raises(UsageError, match="no layer named ''"):
        select_layers(model, [""], (32, 32))  # the root module is not a layer


@pytest.mark.parametrize(
    ("pool", "dense"),
    [
        (nn.MaxPool2d(2, 1), False),
        (nn.MaxPool2d(2, 2), True),
        (nn.MaxPool2d(3, (2, 1)), True),
        (nn.MaxPool2d(3, (1, 2)), True),
        (nn.MaxPool2d(2, (1, 1)), False),
        (nn.AvgPool2d(2, 2), False),  # only max-pools have a dense part worth showing
    ],
)
def test_dense_part_only_for_strided_max_pools(pool, dense):
    assert _dense_pool_input(pool) is dense


def test_all_on_a_patched_net_takes_the_leaves_not_their_wrappers():
    assert _triples(patch_model(_seq()).model, "all", 16) == [
        ("pixels", "", "input"),
        ("0 Conv2d", "0", "output"),
        ("2 MaxPool2d", "2", "output"),
        ("3.blur", "3.blur", "output"),
        ("4.pool", "4.pool", "output"),
        ("4.blur", "4.blur", "output"),
        ("5 AdaptiveAvgPool2d", "5", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(self.pool(x)))


class _ConcatPool(nn.Module):
    """fastai's head: average and max pooling side by side, two global pools in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        return torch.cat([self.avg(x), self.max(x)], 1)


def test_auto_skips_squeeze_excitation_pools_and_keeps_every_global_pool():
    # the SE block's pool is no spatial downsampling (the net goes on at 8x8 after it), but what follows it is measured
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        _SqueezeExcite(4),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        _ConcatPool(),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    assert _triples(model, "auto", 16) == [
        ("pixels", "", "input"),
        ("0 Conv2d (ds)", "0", "output"),
        ("2 Conv2d (in)", "2", "input"),
        ("2 Conv2d (ds)", "2", "output"),
        ("3.avg (pooled)", "3.avg", "output"),
        ("3.max (pooled)", "3.max", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


def test_auto_on_a_grayscale_net_and_on_a_net_without_convolutions():
    gray = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert [(s.name, s.where) for s in select_layers(gray, "auto", (16, 16), channels=1)] == [
        ("pixels", "input"),
        ("0 Conv2d (ds)", "output"),
        ("1 AdaptiveAvgPool2d (pooled)", "output"),
        ("logits", "output"),
        ("softmax", "output"),
    ]
    # no conv, so no stem whose input would be the pixels: the first pool's input is measured; and nothing to read
    # the number of channels from, so it is the one given (a 3-channel probe would not fit the 1-feature head)
    pools = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    assert _triples(pools, "auto", 16, channels=1) == [
        ("pixels", "", "input"),
        ("0 MaxPool2d (in)", "0", "input"),
        ("0 MaxPool2d (dense)", "0", "dense"),
        ("0 MaxPool2d (ds)", "0", "output"),
        ("1 AdaptiveAvgPool2d (pooled)", "1", "output"),
        ("logits", "<logits>", "output"),
        ("softmax", "<softmax>", "output"),
    ]


class _KeywordCalls(nn.Module):
    """Calls its pool by keyword (``self.pool(input=x)``): a forward hook then gets no positional argument."""

    def __init__(self, by_keyword: bool) -> None:
        super().__init__()
        self.by_keyword = by_keyword
        self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        x = self.conv(x)
        return self.head(self.pool(input=x) if self.by_keyword else self.pool(x))


def test_a_layer_called_by_keyword_is_inspected_and_measured_like_one_called_by_position():
    import shiftaudit

    torch.manual_seed(0)
    positional = _KeywordCalls(False).eval()
    keyword = _KeywordCalls(True).eval()
    keyword.load_state_dict(positional.state_dict())
    assert _triples(keyword, "auto", 8) == _triples(positional, "auto", 8)
    assert ("pool (dense)", "pool", "dense") in _triples(keyword, "auto", 8)  # it was missed: no hook input
    x = torch.randn(4, 3, 8, 8)
    a, b = (
        shiftaudit.audit(m, x, max_shift=1, device="cpu", layers="auto").to_json()["metrics"]["layers"]
        for m in (positional, keyword)
    )
    assert a == b and [layer["name"] for layer in b["layers"]][:4] == ["pixels", "pool (in)", "pool (dense)", "pool (ds)"]
