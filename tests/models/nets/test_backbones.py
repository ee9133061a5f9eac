"""Backbones: offline weights (ImageNet from the cache, files with hash checks) and the facts read from
torchvision (models/nets/backbones.py with models/weights/resolve.py).

Inception v3 (27 M parameters) carries most tests; VGG16 (138 M) is built only where
its own behaviour is under test.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import Inception_V3_Weights, ResNet18_Weights, VGG16_BN_Weights, VGG16_Weights

from models.nets.backbones import INCEPTION_AUX_MIN_SIZE, build_backbone, inception_v3
from models.nets.classifier import build_model
from models.weights.resolve import WeightsNotFoundError, backbone_spec, imagenet_weights_file

@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty torchvision cache; any attempt to download fails the test."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert Path(torch.hub.get_dir()) == home / "hub", "torch.hub.set_dir() was called elsewhere"

    def no_network(*args: object, **kwargs: object) -> None:
        pytest.fail(f"network access attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    yield home
    for path in home.rglob("*.pth"):  # pytest keeps recent temp folders; these are big
        path.unlink()


@pytest.fixture
def weights_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder for weights files, emptied afterwards (pytest keeps recent temp folders)."""
    yield tmp_path
    for path in tmp_path.rglob("*.pt*"):
        path.unlink()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """A scratch Inception v3 state_dict saved to disk, and the tensors in it."""
    torch.manual_seed(0)
    # init_weights=False: PyTorch's default init, much faster than Inception's truncated normal.
    state = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(state, path)
    yield path, state
    path.unlink()  # 100 MB: don't leave it in pytest's retained temp folders


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) <= set(state)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


# ---------------------------------------------------------------- ImageNet weights, offline


def test_cache_location_follows_torch_home(torch_home: Path) -> None:
    checkpoints = torch_home / "hub" / "checkpoints"
    assert imagenet_weights_file("vgg16") == checkpoints / "vgg16-397923af.pth"
    assert imagenet_weights_file("vgg16_bn") == checkpoints / "vgg16_bn-6c64b313.pth"
    assert imagenet_weights_file("inception_v3") == checkpoints / "inception_v3_google-0cc3c7bd.pth"
    assert imagenet_weights_file("resnet18") == checkpoints / "resnet18-f37072fd.pth"


@pytest.mark.parametrize(
    ("name", "file_name", "url"),
    [
        ("vgg16", "vgg16-397923af.pth", VGG16_Weights.IMAGENET1K_V1.url),
        ("vgg16_bn", "vgg16_bn-6c64b313.pth", VGG16_BN_Weights.IMAGENET1K_V1.url),
        ("inception_v3", "inception_v3_google-0cc3c7bd.pth", Inception_V3_Weights.IMAGENET1K_V1.url),
        ("resnet18", "resnet18-f37072fd.pth", ResNet18_Weights.IMAGENET1K_V1.url),
    ],
)
def test_missing_imagenet_weights_fail_fast_offline(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, file_name: str, url: str
) -> None:
    # The error must come before any network is built, let alone trained.
    monkeypatch.setattr(tvm, "vgg16", lambda **kw: pytest.fail("built VGG16 before checking weights"))
    monkeypatch.setattr(tvm, "vgg16_bn", lambda **kw: pytest.fail("built VGG16-BN before checking weights"))
    monkeypatch.setattr(tvm, "inception_v3", lambda **kw: pytest.fail("built Inception before checking weights"))
    monkeypatch.setattr(tvm, "resnet18", lambda **kw: pytest.fail("built ResNet-18 before checking weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        build_model(model=name, weights="imagenet", image_size=299)  # type: ignore[arg-type]
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert file_name in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert url in message
    assert "--weights PATH" in message and "--weights none" in message


def test_vgg16_imagenet_weights_load_from_cache(torch_home: Path) -> None:
    # A locally made file under torchvision's name: its SHA-256 doesn't start with
    # 397923af, and the cache route (like torchvision's) must not check it.
    torch.manual_seed(1)
    state = tvm.vgg16(weights=None, init_weights=False).state_dict()
    cached = torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)

    backbone, n_features = build_backbone("vgg16", weights="imagenet")

    assert n_features == 512 * 7 * 7
    assert isinstance(backbone.classifier, nn.Identity)
    assert not any(k.startswith("classifier.") for k in backbone.state_dict())
    _assert_same_tensors(backbone, state)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, n_features)
        assert backbone(torch.randn(1, 3, 48, 40)).shape == (1, n_features)


def test_resnet18_imagenet_weights_load_from_cache_and_give_512_features(torch_home: Path) -> None:
    torch.manual_seed(2)
    state = tvm.resnet18(weights=None).state_dict()
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)

    backbone, n_features = build_backbone("resnet18", weights="imagenet")

    assert n_features == 512
    assert isinstance(backbone.fc, nn.Identity)
    assert not any(k.startswith("fc.") for k in backbone.state_dict())
    _assert_same_tensors(backbone, state)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)
        assert backbone(torch.randn(1, 3, 96, 80)).shape == (1, 512)
    # Another architecture's file is refused, naming it.
    other = torch_home / "vgg.pth"
    torch.save(tvm.vgg16_bn(weights=None, init_weights=False).features.state_dict(), other)
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("resnet18", weights=str(other))
    other.unlink()


def test_weights_enum_reads_the_cache(torch_home: Path, inception_file: tuple[Path, dict]) -> None:
    path, state = inception_file
    cached = torch_home / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    cached.hardlink_to(path)
    _assert_same_tensors(inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1), state)
    with pytest.raises(ValueError, match="VGG16_Weights.IMAGENET1K_V1"):
        inception_v3(weights=VGG16_Weights.IMAGENET1K_V1)


# ---------------------------------------------------------------- weights from a path


def test_path_with_matching_hash_suffix_is_accepted(weights_dir: Path, inception_file: tuple[Path, dict]) -> None:
    source, state = inception_file
    named = weights_dir / f"inception-{_sha256(source)[:8]}.pth"
    named.hardlink_to(source)
    _assert_same_tensors(inception_v3(weights=named), state)


def test_path_with_wrong_hash_suffix_is_refused(weights_dir: Path, inception_file: tuple[Path, dict]) -> None:
    source, _ = inception_file
    actual = _sha256(source)
    wrong = "deadbeef" if not actual.startswith("deadbeef") else "feedface"
    named = weights_dir / f"inception-{wrong}.pth"
    named.hardlink_to(source)
    with pytest.raises(ValueError) as info:
        inception_v3(weights=str(named))
    message = str(info.value)
    assert wrong in message and actual[:8] in message and str(named) in message


def test_path_without_hash_suffix_is_accepted(inception_file: tuple[Path, dict]) -> None:
    path, state = inception_file
    _assert_same_tensors(inception_v3(weights=path), state)


def test_checkpoint_dict_with_model_key_is_accepted(weights_dir: Path, inception_file: tuple[Path, dict]) -> None:
    _, state = inception_file
    path = weights_dir / "checkpoint.pt"
    torch.save({"epoch": 3, "model": state}, path)
    _assert_same_tensors(inception_v3(weights=path), state)


def test_file_without_state_dict_is_refused(weights_dir: Path) -> None:
    path = weights_dir / "not-weights.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="not a state_dict"):
        inception_v3(weights=path)


def test_state_dict_for_another_architecture_names_keys(weights_dir: Path, inception_file: tuple[Path, dict]) -> None:
    _, state = inception_file
    bad = dict(state)
    del bad["Conv2d_1a_3x3.conv.weight"]
    bad["bogus.weight"] = torch.zeros(1)
    bad["fc.weight"] = torch.zeros(2, 2048)
    path = weights_dir / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as info:
        inception_v3(weights=path)
    message = str(info.value)
    for expected in (str(path), "Conv2d_1a_3x3.conv.weight", "bogus.weight", "fc.weight"):
        assert expected in message


def test_missing_weights_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model(model="inception_v3", weights=tmp_path / "nowhere.pth", image_size=75)


# ---------------------------------------------------------------- facts read from torchvision


def test_backbones_normalise_with_imagenet_statistics() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for name in ("vgg16", "vgg16_bn", "inception_v3", "resnet18"):
        spec = backbone_spec(name)  # type: ignore[arg-type]
        assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)


def test_aux_min_size_matches_torchvision() -> None:
    # Run torchvision's own AuxLogits on Mixed_6e's output at the boundary (meta device:
    # shapes only).
    with torch.device("meta"):
        net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    mixed6: list[torch.Tensor] = []
    net.Mixed_6e.register_forward_hook(lambda mod, inp, out: mixed6.append(out))
    for side in (INCEPTION_AUX_MIN_SIZE, INCEPTION_AUX_MIN_SIZE - 1):
        net(torch.empty(1, 3, side, side, device="meta"))
    assert net.AuxLogits(mixed6[0]).shape == (1, 1000)
    with pytest.raises(RuntimeError, match="Kernel size"):
        net.AuxLogits(mixed6[1])
    assert INCEPTION_AUX_MIN_SIZE == 299
