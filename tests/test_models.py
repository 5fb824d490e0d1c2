"""Tests for the model registry: one contract for every entry, exact parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from robustkit.models import (
    MODELS,
    ModelFamily,
    build_model,
    list_models,
    model_spec,
    num_parameters,
)
from robustkit.models.resnet_cifar import ZeroPadShortcut

# (in_channels, image_size, num_classes): CIFAR-10, and the 8x8 digits shape with 7 classes
# so that a hard-coded 10 anywhere would show.
CIFAR_SHAPE = (3, 32, 10)
DIGITS_SHAPE = (1, 8, 7)
# Forward/backward at 32x32 for these takes over a second on one core.
SLOW_AT_CIFAR_SHAPE = {"wrn28_10"}
PARAMETER_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
# A cheap representative of each family, for the checks that need not repeat per entry.
ONE_PER_FAMILY = ["mlp", "cnn", "resnet20", "resnet18", "wrn28_2", "vgg16_bn"]


def _contract_cases() -> list:
    cases = []
    for name in MODELS:
        for shape_id, shape in (("cifar", CIFAR_SHAPE), ("digits", DIGITS_SHAPE)):
            marks = (
                [pytest.mark.slow] if shape_id == "cifar" and name in SLOW_AT_CIFAR_SHAPE else []
            )
            cases.append(pytest.param(name, shape, id=f"{name}-{shape_id}", marks=marks))
    return cases


def _build(name: str, shape: tuple[int, int, int], seed: int = 0) -> nn.Module:
    in_channels, image_size, num_classes = shape
    torch.manual_seed(seed)
    return build_model(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )


def _meta_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=32)


# ------------------------------------------------------------------------- contract, every entry


@pytest.mark.parametrize(("name", "shape"), _contract_cases())
def test_forward_and_backward(name: str, shape: tuple[int, int, int], generator) -> None:
    in_channels, image_size, num_classes = shape
    model = _build(name, shape)
    x = torch.randn(2, in_channels, image_size, image_size, generator=generator)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_rebuilds_the_same_model_and_seed_fixes_init(name: str) -> None:
    in_channels, image_size, num_classes = DIGITS_SHAPE
    spec = model_spec(name, in_channels, num_classes, image_size)
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    first = _build(name, DIGITS_SHAPE).state_dict()
    torch.manual_seed(0)
    rebuilt = build_model(**spec).state_dict()
    assert list(rebuilt) == list(first)
    for key, tensor in first.items():
        assert torch.equal(rebuilt[key], tensor), key


@pytest.mark.parametrize("name", list(MODELS))
def test_parameters_live_in_conv_linear_batchnorm_and_end_in_weight_or_bias(name: str) -> None:
    model = _meta_model(name)
    for module_name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, PARAMETER_MODULES), (module_name, type(module))
    for param_name, param in model.named_parameters():
        assert param_name.endswith(("weight", "bias")), param_name
        assert param.requires_grad
    # Everything normalising is a plain BatchNorm2d (optimisers exempt it by name).
    assert not any(
        isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.BatchNorm2d)
        for m in model.modules()
    )


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_another_seed_gives_another_init(name: str) -> None:
    first = _build(name, DIGITS_SHAPE, seed=0)
    other = dict(_build(name, DIGITS_SHAPE, seed=1).named_modules())
    for module_name, module in first.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert not torch.equal(other[module_name].weight, module.weight), module_name


@pytest.mark.parametrize("name", [n for n in ONE_PER_FAMILY if n != "mlp"])
@pytest.mark.parametrize("image_size", [12, 28])
def test_conv_nets_accept_other_image_sizes(name: str, image_size: int, generator) -> None:
    model = _build(name, (1, image_size, 10))
    x = torch.randn(2, 1, image_size, image_size, generator=generator)
    assert model(x).shape == (2, 10)


# ------------------------------------------------------------------------- parameter counts


def cifar_resnet_num_parameters(depth: int, in_channels: int, num_classes: int) -> int:
    """Closed form for ResNet-(6n+2), option A: conv weights + BN (gamma, beta) + linear."""
    n = (depth - 2) // 6
    total = 9 * in_channels * 16 + 2 * 16
    previous = 16
    for width in (16, 32, 64):
        # Block 1 of the stage maps previous -> width; option-A shortcuts are parameter-free.
        total += 9 * previous * width + 9 * width * width + 4 * width
        total += (n - 1) * (2 * 9 * width * width + 4 * width)
        previous = width
    return total + 64 * num_classes + num_classes


def wrn_num_parameters(depth: int, k: int, in_channels: int, num_classes: int) -> int:
    """Closed form for WRN-d-k: pre-activation blocks, 1x1 projections where widths change."""
    n = (depth - 4) // 6
    total = 9 * in_channels * 16
    previous = 16
    for width in (16 * k, 32 * k, 64 * k):
        projection = previous * width if previous != width else 0
        total += 2 * previous + 9 * previous * width + 2 * width + 9 * width * width + projection
        total += (n - 1) * (2 * (2 * width + 9 * width * width))
        previous = width
    return total + 2 * 64 * k + 64 * k * num_classes + num_classes


# name -> (exact count at CIFAR-10 shape, published count in millions, decimals published).
PUBLISHED_NUM_PARAMETERS = {
    "resnet20": (269_722, 0.27, 2),  # He et al. 2016, Table 6
    "resnet32": (464_154, 0.46, 2),
    "resnet44": (658_586, 0.66, 2),
    "resnet56": (853_018, 0.85, 2),
    "resnet110": (1_727_962, 1.7, 1),
    "wrn28_10": (36_479_194, 36.5, 1),  # Zagoruyko & Komodakis 2016, Table 4
    "wrn28_2": (1_467_610, 1.47, 2),
    "resnet18": (11_173_962, 11.17, 2),  # common CIFAR ResNet-18
    "resnet34": (21_282_122, 21.28, 2),
    "vgg16_bn": (14_728_266, 14.73, 2),  # common CIFAR VGG-16-BN
    "vgg19_bn": (20_040_522, 20.04, 2),
}


@pytest.mark.parametrize("name", list(PUBLISHED_NUM_PARAMETERS))
def test_parameter_count_matches_published(name: str) -> None:
    exact, published_millions, decimals = PUBLISHED_NUM_PARAMETERS[name]
    count = num_parameters(_meta_model(name))
    assert count == exact
    assert round(count / 1e6, decimals) == published_millions


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(3, 10), (1, 7)])
def test_cifar_resnet_count_matches_closed_form(depth: int, in_channels: int, num_classes: int):
    model = _meta_model(f"resnet{depth}", in_channels, num_classes)
    assert num_parameters(model) == cifar_resnet_num_parameters(depth, in_channels, num_classes)


@pytest.mark.parametrize(("name", "k"), [("wrn28_2", 2), ("wrn28_10", 10)])
@pytest.mark.parametrize(("in_channels", "num_classes"), [(3, 10), (1, 7)])
def test_wrn_count_matches_closed_form(name: str, k: int, in_channels: int, num_classes: int):
    model = _meta_model(name, in_channels, num_classes)
    assert num_parameters(model) == wrn_num_parameters(28, k, in_channels, num_classes)


def test_meta_count_equals_materialised_count() -> None:
    for name in ("mlp", "cnn", "resnet20", "wrn28_2"):
        assert num_parameters(_build(name, CIFAR_SHAPE)) == num_parameters(_meta_model(name))


def test_mlp_layers() -> None:
    model = _build("mlp", (1, 8, 7))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 256), (256, 256), (256, 7)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


# ------------------------------------------------------------------------- architecture details


def test_option_a_shortcut_subsamples_and_zero_pads(generator) -> None:
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, ::2, ::2]
    assert torch.equal(shortcut(x), expected)
    assert not list(shortcut.parameters())


def test_vgg_skips_pools_below_one_pixel_with_stable_keys() -> None:
    small = _build("vgg16_bn", (1, 8, 10))
    large = _build("vgg16_bn", (1, 32, 10))
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in large.modules()) == 5
    assert list(small.state_dict()) == list(large.state_dict())


def test_wrn_has_no_dropout_by_default(generator) -> None:
    model = _build("wrn28_2", DIGITS_SHAPE)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    x = torch.randn(2, 1, 8, 8, generator=generator)
    assert torch.equal(model(x), model(x))  # training mode, yet deterministic


# ------------------------------------------------------------------------- registry and errors


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'.*resnet20.*wrn28_10"):
        build_model("resnet21", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="known models"):
        model_spec("nope", 3, 10, 32)


@pytest.mark.parametrize(
    ("name", "in_channels", "num_classes", "image_size", "message"),
    [
        ("cnn", 0, 10, 32, "in_channels"),
        ("cnn", 3, 0, 32, "num_classes"),
        ("cnn", 3, 10, 4, "image_size"),
        ("resnet20", 3, 10, 32.0, "image_size"),
        ("mlp", True, 10, 8, "in_channels"),
    ],
)
def test_bad_sizes_raise_value_error(name, in_channels, num_classes, image_size, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def test_mlp_accepts_tiny_images() -> None:
    assert _build("mlp", (1, 1, 2))(torch.ones(2, 1, 1, 1)).shape == (2, 2)


def test_list_models_covers_registry_without_touching_global_rng() -> None:
    state = torch.random.get_rng_state()
    infos = list_models()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [info.name for info in infos] == list(MODELS)
    by_name = {info.name: info for info in infos}
    for name, (exact, _, _) in PUBLISHED_NUM_PARAMETERS.items():
        assert by_name[name].num_parameters == exact
    for info in infos:
        assert isinstance(info.family, ModelFamily) and info.family != ModelFamily.OTHER
        assert info.description
    assert by_name["resnet20"].family == ModelFamily.RESNET_CIFAR


def test_user_registered_model_is_listed_as_other(monkeypatch) -> None:
    def tiny(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        """A linear model on the flattened image."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    monkeypatch.setitem(MODELS, "tiny", tiny)
    info = {info.name: info for info in list_models()}["tiny"]
    assert info.family == ModelFamily.OTHER
    assert info.description == "A linear model on the flattened image."
    assert info.num_parameters == 3 * 32 * 32 * 10 + 10
    assert build_model("tiny", in_channels=1, num_classes=2, image_size=3)(
        torch.ones(1, 1, 3, 3)
    ).shape == (1, 2)


# ------------------------------------------------------------------------- command line


def test_models_command_lists_every_entry_with_exact_counts() -> None:
    from click.testing import CliRunner

    from robustkit.cli import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == [
        "name",
        "family",
        "params (CIFAR-10)",
        "description",
    ]
    rows = {line.split("|")[0].strip(): line for line in lines[2:]}
    assert list(rows) == list(MODELS)
    assert "| 269,722 " in rows["resnet20"]
    assert "| 36,479,194 " in rows["wrn28_10"]


def test_models_command_help_does_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from robustkit.cli import main; "
        "r = CliRunner().invoke(main, ['models', '--help']); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
