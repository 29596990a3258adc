"""bf16 teachers keep an fp32 classifier head and softmax; compiled teachers see one batch shape."""

import pytest
import torch
from torch import nn

from dr.teachers import Ensemble
from dr.teachers.precision import Fp32Head, fp32_head, resolved_precision


def test_resolved_precision() -> None:
    assert resolved_precision("auto", "cuda") == "bf16" and resolved_precision("bf16", "cuda") == "bf16"
    assert resolved_precision("auto", "cpu") == "fp32" and resolved_precision("bf16", "cpu") == "bf16"
    assert resolved_precision("fp32", "cuda") == "fp32"


def test_bf16_ensembles_compute_logits_in_fp32(tiny_teacher: str) -> None:
    ens = Ensemble.from_specs([tiny_teacher], precision="bf16")
    teacher = ens.members[0]
    assert isinstance(teacher.model[-1], Fp32Head)  # tiny_cnn's head is its last Linear
    ref = Ensemble.from_specs([tiny_teacher])  # fp32: nothing wrapped
    assert not any(isinstance(m, Fp32Head) for m in ref.modules())
    views = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher(views)
        features = teacher.model[:-1](teacher.prepare(views))
    assert logits.dtype == torch.float32  # a bf16 body, but fp32 logits
    torch.testing.assert_close(logits, teacher.model[-1].head(features.float()))
    with torch.inference_mode():
        bf16 = ens(views)  # bf16 autocast on the CPU too (--precision bf16)
        torch.testing.assert_close(bf16, ref(views), atol=0.02, rtol=0)
        assert not torch.equal(bf16, ref(views))
        ens.precision = "fp32"  # the same weights answer the same in fp32 (state is shared, only the call is wrapped)
        torch.testing.assert_close(ens(views), ref(views))


def test_fp32_head_prefers_timm_get_classifier() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.proj = nn.Linear(3, 3)  # registered last, but not the classifier

        def get_classifier(self) -> nn.Module:
            return self.fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net = Net()
    assert fp32_head(net) and isinstance(net.fc, Fp32Head) and isinstance(net.proj, nn.Linear)
    assert not fp32_head(net)  # once
    assert not fp32_head(torch.fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2))))  # a program: left alone


def test_compiled_ensembles_see_one_batch_shape(tiny_teacher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build's last, smaller chunk (or an epoch's last batch) is padded to the batch shape
    already compiled, instead of a recompile per teacher per shape (torch.compile gives up
    after 8); the padded rows change no real row's output."""
    import functools

    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    ens = Ensemble.from_specs([tiny_teacher, tiny_teacher + "?weight=2"]).optimize(compile=True)
    eager = Ensemble.from_specs([tiny_teacher, tiny_teacher + "?weight=2"])
    views = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    compiled = []
    for n in (8, 8, 3, 5, 8, 1):
        out = ens(views[:n])
        assert out.shape == (n, 10)
        torch.testing.assert_close(out, eager(views[:n]), rtol=1e-5, atol=1e-6)
        compiled.append(counter.frame_count)
    assert compiled[0] >= 1 and set(compiled) == {compiled[0]}  # no recompile, whatever the batch sizes
    torch._dynamo.reset()
