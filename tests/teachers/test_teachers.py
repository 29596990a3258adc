from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dr.errors import TeacherError
from dr.teachers import Ensemble, load_teacher, parse_teacher_spec, topk
from dr.teachers.zoo import cifar_resnet, tiny_cnn


def test_parse_specs() -> None:
    s = parse_teacher_spec("timm:resnet50@/w/r50.safetensors?input_size=3x160x160&mean=0.5,0.5,0.5&weight=2&num_classes=10&drop_rate=0.1")
    assert (s.kind, s.name, s.weights, s.input_size, s.mean, s.weight) == (
        "timm",
        "resnet50",
        "/w/r50.safetensors",
        (160, 160),
        (0.5, 0.5, 0.5),
        2.0,
    )
    assert s.kwargs == {"num_classes": 10, "drop_rate": 0.1}
    s = parse_teacher_spec("python:dr.teachers.zoo:cifar_resnet@w.safetensors?depth=20")
    assert (s.name, s.weights, s.kwargs) == ("dr.teachers.zoo:cifar_resnet", "w.safetensors", {"depth": 20})
    s = parse_teacher_spec("torchscript:/m/t.pt")
    assert s.weights == "/m/t.pt"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("resnet50", "KIND:NAME"),
        ("keras:resnet50", "unknown kind 'keras'"),
        ("timm:", "missing model name"),
        ("python:justamodule", "python:MODULE:FACTORY"),
        ("timm:resnet50?mean=1,2", "three comma-separated"),
        ("timm:resnet50?input_size=big", "input_size='big'"),
        ("timm:resnet50?weight=-1", "weight"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, match: str) -> None:
    with pytest.raises(TeacherError, match=match):
        parse_teacher_spec(spec)


def test_python_factory_with_safetensors_weights(tmp_path: Path) -> None:
    model = cifar_resnet(depth=8, width=8).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    t = load_teacher(f"python:dr.teachers.zoo:cifar_resnet@{tmp_path / 'w.safetensors'}?depth=8&width=8")
    assert t.preprocess.input_size == (32, 32)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(t.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(t.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expect = model((x.float() / 255 - mean) / std)
        torch.testing.assert_close(t(x), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(TeacherError, match="do not fit"):
        load_teacher(f"python:dr.teachers.zoo:cifar_resnet@{tmp_path / 'w.safetensors'}?depth=14&width=8")


def test_timm_torchvision_pth_weights_only(tmp_path: Path) -> None:
    import timm
    import torchvision

    m = timm.create_model("test_resnet", num_classes=10).eval()
    torch.save({"state_dict": m.state_dict()}, tmp_path / "t.pth")
    t = load_teacher(f"timm:test_resnet@{tmp_path / 't.pth'}?num_classes=10")
    assert t.preprocess.input_size == (160, 160) and t.preprocess.mean == (0.5, 0.5, 0.5)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert t(x).shape == (2, 10)
    tv = torchvision.models.get_model("mobilenet_v3_small", num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    t2 = load_teacher(f"torchvision:mobilenet_v3_small@{tmp_path / 'tv.pth'}?num_classes=10&input_size=64")
    assert t2(x).shape == (2, 10)
    with pytest.raises(TeacherError, match="not found"):
        load_teacher(f"timm:test_resnet@{tmp_path / 'missing.safetensors'}")


def test_torchscript_and_export_programs_give_identical_logits(tmp_path: Path) -> None:
    model = cifar_resnet(depth=8, width=8).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    example = torch.randn(2, 3, 32, 32)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(tmp_path / "m.pt"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(tmp_path / "m.pt2"))
    opts = "?mean=0.4914,0.4822,0.4465&std=0.247,0.2435,0.2616"
    a = load_teacher(f"torchscript:{tmp_path / 'm.pt'}{opts}")(x)
    b = load_teacher(f"export:{tmp_path / 'm.pt2'}{opts}")(x)
    c = load_teacher("python:dr.teachers.zoo:cifar_resnet?depth=8&width=8", allow_random=True)
    c.model.load_state_dict(model.state_dict())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c(x), rtol=1e-5, atol=1e-5)


def test_ensemble_is_weighted_mean_of_tempered_probabilities(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"t{seed}.safetensors")
        save_file(tiny_cnn().state_dict(), str(paths[-1]))
    ens = Ensemble.from_specs(
        [f"python:dr.teachers.zoo:tiny_cnn@{paths[0]}?weight=3", f"python:dr.teachers.zoo:tiny_cnn@{paths[1]}"], temperature=2.0
    )
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        z0, z1 = ens.teachers[0](x), ens.teachers[1](x)
    expect = 0.75 * torch.softmax(z0 / 2, 1) + 0.25 * torch.softmax(z1 / 2, 1)
    p = ens(x)
    torch.testing.assert_close(p, expect)
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    ids, vals = topk(p, 3)
    assert (vals[:, :-1] >= vals[:, 1:]).all()
    torch.testing.assert_close(p.gather(1, ids), vals)
    with pytest.raises(TeacherError, match="top-k"):
        topk(p, 11)


def test_ensemble_refuses_mismatched_label_spaces() -> None:
    ens = Ensemble.from_specs(
        ["python:dr.teachers.zoo:tiny_cnn?num_classes=10", "python:dr.teachers.zoo:tiny_cnn?num_classes=7"], allow_random=True
    )
    with pytest.raises(TeacherError, match="share the label space"):
        ens(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
