"""Issue 14: teacher class names and class maps, random teachers, torchvision weight enums,
fsspec weights, timm's checkpoint reader, explicit preprocessing for programs."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dr.errors import ConfigError, TeacherError
from dr.teachers import (
    ClassMap,
    Ensemble,
    is_random_init,
    load_teacher,
    parse_teacher_spec,
    program_metadata,
    resolve_class_map,
    resolve_torchvision_weights,
)
from dr.teachers.zoo import cifar_resnet, tiny_cnn

REPO = Path(__file__).resolve().parents[2]
DEMO = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_demo_teacher_names_its_classes_from_the_card_next_to_the_weights() -> None:
    t = load_teacher(DEMO)
    assert t.classes == tuple(CIFAR) and "cifar_resnet20.json" in str(t.classes_from)
    assert t.preprocess.source == "pretrained_cfg" and t.describe()["classes_from"] == t.classes_from
    # a classes= option wins (here: names in the spec)
    t2 = load_teacher(DEMO + "&classes=" + ",".join(reversed(CIFAR)))
    assert t2.classes == tuple(reversed(CIFAR)) and t2.classes_from == "spec"


def test_differing_classes_are_refused_unless_mapped() -> None:
    # the case: 3 dataset classes, a 10-class teacher -- used to build silently
    with pytest.raises(ConfigError, match="--class-map names") as e:
        resolve_class_map(["bird", "cat", "dog"], CIFAR, 10, None)
    assert "(bird, cat, dog)" in str(e.value) and "wrong classes" in str(e.value)
    with pytest.raises(ConfigError, match="names are unknown"):
        resolve_class_map(["bird", "cat", "dog"], None, 10, None)
    with pytest.raises(ConfigError, match="identity"):
        resolve_class_map(["bird", "cat", "dog"], CIFAR, 10, "identity")
    assert resolve_class_map(CIFAR, CIFAR, 10, None) is None  # same classes: nothing to map
    assert resolve_class_map([str(i) for i in range(10)], None, 10, None) is None  # unknown names, same count
    names = resolve_class_map(["bird", "cat", "dog"], CIFAR, 10, "names")
    assert names is not None and names.teacher_to_dataset == (-1, -1, 0, 1, -1, 2, -1, -1, -1, -1)
    ident = resolve_class_map(list("abcdefghij"), CIFAR, 10, "identity")
    assert ident is not None and ident.is_identity


def test_class_map_file_many_to_one_and_apply(tmp_path: Path) -> None:
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"animal": ["bird", "cat", 4, "dog"], "vehicle": ["airplane", "automobile", "ship", "truck"]}))
    cm = resolve_class_map(["animal", "vehicle"], CIFAR, 10, str(f))
    assert cm is not None and cm.kind == "file" and cm.teacher_to_dataset == (1, 1, 0, 0, 0, 0, -1, -1, 1, 1)
    p = torch.softmax(torch.randn(4, 10), 1)
    out = cm.apply(p)
    keep = p[:, [0, 1, 2, 3, 4, 5, 8, 9]].sum(1)
    torch.testing.assert_close(out[:, 0], p[:, 2:6].sum(1) / keep)
    torch.testing.assert_close(out.sum(1), torch.ones(4))
    assert ClassMap.from_dict(cm.to_dict()) == cm
    for bad, match in [
        ({"animal": "bird"}, "'vehicle' is not mapped"),
        ({"animal": "bird", "vehicle": "bird"}, "mapped to two"),
        ({"animal": "unicorn", "vehicle": "ship"}, "'unicorn'.*not a teacher class"),
        ({"animal": "bird", "vehicle": "ship", "plant": "frog"}, "'plant'.*not dataset classes"),
    ]:
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            resolve_class_map(["animal", "vehicle"], CIFAR, 10, str(f))


def test_random_teachers_are_refused_unless_allowed_and_then_seeded() -> None:
    spec = "python:dr.teachers.zoo:tiny_cnn?num_classes=10"
    assert is_random_init(spec) and not is_random_init(DEMO) and not is_random_init("timm:resnet18?pretrained=true")
    with pytest.raises(TeacherError, match="has no weights.*--allow-random-teachers"):
        load_teacher(spec)
    with pytest.raises(TeacherError, match=r"\?weights=IMAGENET1K_V1"):
        load_teacher("torchvision:resnet18")
    a = load_teacher(spec, allow_random=True, init_seed=5)
    torch.manual_seed(123)  # the global RNG does not matter, and is left alone
    state = torch.random.get_rng_state()
    b = load_teacher(spec, allow_random=True, init_seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    c = load_teacher(spec, allow_random=True, init_seed=6)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not all(torch.equal(va, vc) for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()))
    assert a.describe()["init_seed"] == 5 and load_teacher(DEMO).describe()["init_seed"] is None
    ens = Ensemble.from_specs([spec, spec], allow_random=True, init_seeds=[5, 6])
    assert [t.init_seed for t in ens.members] == [5, 6]


def test_torchvision_weight_enums_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    spec = parse_teacher_spec("torchvision:mobilenet_v3_small?weights=IMAGENET1K_V1")
    assert spec.hub_weights == "IMAGENET1K_V1" and "weights" not in spec.kwargs  # was: get_model() got multiple values for 'weights'
    w = resolve_torchvision_weights(spec)
    assert w is torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    assert resolve_torchvision_weights(parse_teacher_spec("torchvision:mobilenet_v3_small?pretrained=true")) is w  # DEFAULT
    with pytest.raises(TeacherError, match="use one of IMAGENET1K_V1, DEFAULT"):
        resolve_torchvision_weights(parse_teacher_spec("torchvision:mobilenet_v3_small?weights=IMAGENET9K"))
    # a local file with the enum's architecture, classes and preprocessing: the hub cache is not touched
    model = torchvision.models.mobilenet_v3_small(num_classes=1000).eval()
    torch.save(model.state_dict(), tmp_path / "mv3.pth")
    t = load_teacher(f"torchvision:mobilenet_v3_small@{tmp_path / 'mv3.pth'}?weights=IMAGENET1K_V1")
    assert not (tmp_path / "torch-home").exists()
    assert t.preprocess.input_size == (224, 224) and t.preprocess.mean == (0.485, 0.456, 0.406)
    assert "IMAGENET1K_V1" in t.preprocess.source
    assert t.classes is not None and len(t.classes) == 1000 and t.classes[0] == "n01440764"  # ImageNet folder names
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    # without a file: the weights come through torch.hub's cache (pre-filled here, so no download)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(model.state_dict(), cache / Path(w.url).name)
    hub = load_teacher("torchvision:mobilenet_v3_small?weights=IMAGENET1K_V1")
    assert hub.describe()["hub_weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    torch.testing.assert_close(hub(x), t(x))
    with pytest.raises(TeacherError, match="names torchvision weights"):
        parse_teacher_spec("timm:resnet18?weights=IMAGENET1K_V1")


def test_weights_through_fsspec_urls(tmp_path: Path) -> None:
    import fsspec

    torch.manual_seed(3)
    model = tiny_cnn(num_classes=10).eval()
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/dr-test/tiny.safetensors", (tmp_path / "tiny.safetensors").read_bytes())
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    local = load_teacher(f"python:dr.teachers.zoo:tiny_cnn@{tmp_path / 'tiny.safetensors'}")
    remote = load_teacher("python:dr.teachers.zoo:tiny_cnn@memory://dr-test/tiny.safetensors")
    file_url = load_teacher(f"python:dr.teachers.zoo:tiny_cnn@file://{tmp_path / 'tiny.safetensors'}")
    torch.testing.assert_close(remote(x), local(x))
    torch.testing.assert_close(file_url(x), local(x))
    assert remote.weights_sha256 == local.weights_sha256
    with pytest.raises(TeacherError, match="not found"):
        load_teacher("python:dr.teachers.zoo:tiny_cnn@memory://dr-test/missing.safetensors")


def test_checkpoint_wrappers_go_through_timms_reader(tmp_path: Path) -> None:
    model = tiny_cnn(num_classes=10).eval()
    ema = {f"module._orig_mod.{k}": v * 0 + 1 for k, v in model.state_dict().items()}  # DDP + compile prefixes
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "state_dict_ema": ema, "epoch": 3}, tmp_path / "c.pth"
    )
    t = load_teacher(f"python:dr.teachers.zoo:tiny_cnn@{tmp_path / 'c.pth'}")
    assert all(torch.equal(v, torch.ones_like(v)) for v in t.model.state_dict().values())  # EMA preferred, prefixes gone


def test_programs_need_explicit_preprocessing(tmp_path: Path) -> None:
    model = cifar_resnet(depth=8, width=8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
        torch.jit.save(traced, str(tmp_path / "plain.pt"))
        meta = program_metadata(normalize="none", classes=[f"c{i}" for i in range(10)])
        torch.jit.save(traced, str(tmp_path / "meta.pt"), _extra_files=meta)
    # was: ImageNet mean/std, silently (11.66 % agreement for a ResNet-56 that normalises inside)
    with pytest.raises(TeacherError, match=r"does not say how its inputs are normalised.*normalize=none"):
        load_teacher(f"torchscript:{tmp_path / 'plain.pt'}")
    t = load_teacher(f"torchscript:{tmp_path / 'plain.pt'}?normalize=none")
    assert (t.preprocess.mean, t.preprocess.std, t.preprocess.source) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "spec (normalize=none)")
    assert "no normalisation" in t.preprocess.describe()
    m = load_teacher(f"torchscript:{tmp_path / 'meta.pt'}")
    assert m.preprocess.mean == (0.0, 0.0, 0.0) and "metadata in" in m.preprocess.source and m.classes == tuple(f"c{i}" for i in range(10))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(m(x), model(x.float() / 255))
    # a JSON card next to the program works too
    (tmp_path / "plain.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    c = load_teacher(f"torchscript:{tmp_path / 'plain.pt'}")
    assert c.preprocess.mean == (0.5, 0.5, 0.5) and "plain.json" in c.preprocess.source
    for spec, match in [
        ("torchscript:/m.pt?normalize=none&mean=0,0,0", "contradict"),
        ("torchscript:/m.pt?normalize=imagenet", "only value is none"),
    ]:
        with pytest.raises(TeacherError, match=match):
            parse_teacher_spec(spec)
