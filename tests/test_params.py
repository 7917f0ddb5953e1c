"""The parameter table (`shared.params`): validation names the field at fault; the coarse-to-fine
plan adds up; resolving the automatic choices never changes what runs."""
import math

import pytest

from shared.params import ParamError, Params, plan, resolve


@pytest.mark.parametrize("field, value", [
    ("size", 0), ("size", 10_000), ("size", 64.5), ("size", True), ("iterations", 0), ("iterations", -5),
    ("scales", 7), ("content_weight", -1), ("style_weight", math.nan), ("tv_weight", math.inf),
    ("style_scale", 0), ("style_scale", 9), ("optimizer", "sgd"), ("pooling", "min"),
    ("preserve_color", "sepia"), ("init", "photo.jpg"), ("seed", -1), ("precision", "fp8"),
    ("content_layers", ()), ("style_layers", ("relu9_1",)), ("style_weights", (-1.0,)),
    ("style_weights", (0.0, 0.0)), ("style_weights", (1e308, 1e308)), ("style_layer_weights", (1.0, 2.0)),
    ("style_layer_weights", (1e308,) * 5), ("learning_rate", 0),
])
def test_bad_values_name_their_field(field, value):
    with pytest.raises(ParamError) as info:
        Params(**{field: value})
    assert info.value.field == field


def test_weights_cannot_all_be_zero():
    with pytest.raises(ParamError, match="both be 0"):
        Params(content_weight=0, style_weight=0)


def test_default_plan_is_coarse_to_fine_ending_at_the_output_size():
    stages = plan(Params(size=512))
    sizes = [s.longest for s in stages]
    assert sizes == sorted(sizes) and sizes[-1] == 512 and sizes[0] <= 128
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:]))
    counts = [s.iterations for s in stages]
    assert counts == sorted(counts, reverse=True), "coarse stages are cheap and get more iterations"


@pytest.mark.parametrize("size, iterations, scales", [(512, 100, None), (512, 7, 3), (1024, 1000, 4), (64, 10, None), (300, 3, 2)])
def test_plan_spends_exactly_the_requested_iterations(size, iterations, scales):
    stages = plan(Params(size=size, iterations=iterations, scales=scales))
    assert sum(s.iterations for s in stages) == iterations
    assert all(s.iterations >= 1 for s in stages) or iterations < len(stages)
    assert stages[-1].longest == size
    if scales:
        assert len(stages) == min(scales, iterations)


def test_single_scale():
    assert [(s.longest, s.iterations) for s in plan(Params(size=256, iterations=40, scales=1))] == [(256, 40)]


def test_small_outputs_are_single_scale_by_default():
    assert len(plan(Params(size=64))) == 1


def test_to_dict_is_json_ready():
    d = Params(style_weights=(1.0, 2.0)).to_dict()
    assert d["style_weights"] == [1.0, 2.0] and d["size"] == 512 and d["optimizer"] == "lbfgs"


@pytest.mark.parametrize("size", [32, 100, 128, 300, 512, 777, 1024, 2048])
@pytest.mark.parametrize("iterations", [None, 1, 2, 3, 7, 50, 205, 1000])
@pytest.mark.parametrize("scales", [None, 1, 2, 6])
def test_resolving_makes_every_choice_explicit_without_changing_the_plan(size, iterations, scales):
    params = Params(size=size, iterations=iterations, scales=scales)
    resolved = resolve(params, styles=2)
    assert plan(resolved) == plan(params)
    assert resolved.iterations == sum(s.iterations for s in plan(params)) and resolved.scales == len(plan(params))
    assert resolved.style_weights == (1.0, 1.0) and resolved.style_layer_weights == (1.0,) * 5
    assert resolve(resolved, styles=2) == resolved


def test_the_default_total_split_again_gives_the_default_schedule():
    default = plan(Params(size=1024))
    assert plan(Params(size=1024, iterations=sum(s.iterations for s in default))) == default


def test_resolving_checks_one_blend_weight_per_style():
    with pytest.raises(ParamError) as info:
        resolve(Params(style_weights=(1.0, 2.0)), styles=3)
    assert info.value.field == "style_weights"


def test_from_dict_reverses_to_dict():
    params = Params(size=300, style_weights=(1.0, 2.0), style_layers=("relu1_1", "relu3_1"), style_layer_weights=(2.0, 1.0))
    assert Params.from_dict(params.to_dict()) == params
