"""Exporting converted models: torch.export, ONNX (dynamo and legacy), torch.jit.trace and torch.compile.

Every exported graph is run (ONNX graphs in onnxruntime, or onnx's reference evaluator where onnxruntime is
missing) and compared with the eager model on circularly shifted inputs. The APS choice, which is
data-dependent, is written as tensor operations under graph capture; the tests check that it makes the
eager choice phase for phase, near-ties included, and that an exported APS + circular graph is itself
invariant to circular shifts.
"""

import collections
import io
import warnings

import pytest
import torch
from _models import make
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shiftlab.fix._ops as ops_module
import shiftlab.layers.aps as aps_module
import shiftlab.layers.blur_pool as blur_module
from shiftlab.fix._ops import DensePool2d
from shiftlab.fix.antialias import antialias
from shiftlab.layers import (
    PADDING_MODES,
    APSPool2d,
    BlurPool2d,
    aps_phase,
    aps_pool2d,
    blur_pool2d,
)
from shiftlab.layers.aps import _phase, _phase_graph, _plain_energies
from shiftlab.layers.blur_pool import _blur_graph

timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the dynamo ONNX exporter

F64 = torch.float64
# relative to the largest output: float32 exports agree with eager to ~1e-6 (measured); a different APS phase
# moves the logits of these networks by 1e-2 or more
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}
SIZE = 64


def run_onnx(model_bytes: bytes, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run an ONNX graph in onnxruntime, or in onnx's reference evaluator where onnxruntime is not installed."""
    feeds_np = [x.numpy() for x in inputs]
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load_from_string(model_bytes))
        names = [i.name for i in onnx.load_from_string(model_bytes).graph.input]
        return [torch.from_numpy(o) for o in evaluator.run(None, dict(zip(names, feeds_np)))]
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(o) for o in session.run(None, dict(zip(names, feeds_np)))]


def onnx_dynamo(exported_program, args, optimize: bool = True) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(exported_program, args, dynamo=True, verbose=False, optimize=optimize)
    return program.model_proto.SerializeToString()


def onnx_legacy(model, args) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False)
    return buffer.getvalue()


SHIFTS = [(0, 0), (1, 0), (0, 1), (1, 1), (5, 3), (17, 30)]


def shifted_inputs(dtype=torch.float32) -> torch.Tensor:
    """One random image under six circular shifts, then an image constant along every row (every APS choice
    in an APS + circular network is then an exact tie between components, decided by the exact rule)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    rows = torch.randn(1, 3, 1, SIZE, generator=g).expand(1, 3, SIZE, SIZE)
    return torch.cat([torch.roll(x, s, (-2, -1)) for s in SHIFTS] + [rows]).to(dtype)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def invariance_gap(out: torch.Tensor) -> float:
    """Largest relative change of the outputs of the shifted copies (the first len(SHIFTS) rows)."""
    return relative(out[1:len(SHIFTS)], out[:1].expand(len(SHIFTS) - 1, -1))


def onnx_ops(model_bytes: bytes) -> collections.Counter:
    graph = onnx.load_from_string(model_bytes).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    counts["depthwise Conv"] = sum(node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
                                   for node in graph.node)
    return counts


# --- converted torchvision and timm models, exported and run ---------------------------------------------------
#
# APS compares the energies of the components, and a blur before the choice (filter_size=3, the default) makes
# them nearly equal: in these networks the two largest differ by 1e-6 to 1e-4 relative. In float32 a runtime
# whose convolutions round differently (onnxruntime's, ~1e-7 relative) can then keep the other component of
# such a near-tie than eager PyTorch does. So eager and exported graphs are compared in float32 for APS
# without that blur (margins above 1e-4, far from rounding) and for the default APS in float64, where
# rounding is 1e-16; in float32 the default's exported graph is checked to be invariant itself.

@pytest.mark.parametrize("method", ["blur", "aps"])
@pytest.mark.parametrize("name", ["tv_resnet18", "timm_lite0"])  # (timm's resnet18 is torchvision's layout again)
def test_feature_exported_models_match_eager_on_shifted_inputs(name, method):
    original = make(name)
    model, _ = antialias(original, method, **(dict(circular=True, filter_size=1) if method == "aps" else {}))
    x = shifted_inputs()
    with torch.no_grad():
        want = model(x)
        unconverted = original(x)
    exported = torch.export.export(model, (x,))
    dynamo = onnx_dynamo(exported, (x,), optimize=name == "tv_resnet18")  # the default, and a faster export
    legacy = onnx_legacy(model, (x,))
    with torch.no_grad():
        got = {"torch.export": exported.module()(x)}
    got["onnx dynamo"] = run_onnx(dynamo, x)[0]
    got["onnx legacy"] = run_onnx(legacy, x)[0]
    for label, out in got.items():
        assert out.shape == want.shape, label
        assert relative(out, want) < RTOL[torch.float32], (label, relative(out, want))
    # the hooks that attach the subsampling layers were captured: the graph holds each of them
    layers = [m for m in model.modules() if isinstance(m, (BlurPool2d, APSPool2d))]
    blurs = sum(m.filter_size > 1 for m in layers)
    for graph in (dynamo, legacy):
        counts = onnx_ops(graph)
        assert counts["depthwise Conv"] >= 2 * blurs  # two separable passes per blur
        if method == "aps":
            assert counts["GatherElements"] == len(layers)
            assert counts["ArgMax"] >= 2 and counts["Where"] >= 1  # both rules and the choice between them
    # negative control: the exported graph is not the unconverted network
    assert relative(got["onnx dynamo"], unconverted) > 1e-2
    if method == "aps":  # the exported graph is itself exactly invariant to circular shifts
        for label, out in got.items():
            assert invariance_gap(out) < 1e-5, (label, invariance_gap(out))
    else:  # negative control: a blurred network is not invariant, and the check sees it
        assert invariance_gap(got["onnx dynamo"]) > 1e-3


@pytest.mark.parametrize("name", ["tv_resnet18", "timm_lite0"])
def test_feature_exported_default_aps_matches_eager_in_float64_and_is_invariant_in_float32(name):
    """onnxruntime has no float64 Conv, so the float64 graph is run by torch.export's module."""
    model, _ = antialias(make(name), "aps", circular=True)  # filter_size=3
    x = shifted_inputs()
    out32 = run_onnx(onnx_legacy(model, (x,)), x)[0]
    assert invariance_gap(out32) < 1e-5
    model, x = model.double(), x.double()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        want, got = model(x), exported.module()(x)
    assert got.dtype == F64 and relative(got, want) < RTOL[F64]
    assert invariance_gap(got) < 1e-10 and invariance_gap(want) < 1e-10
    # the float32 graph agrees with float64 eager to its rounding, except where a near-tie went the other way
    assert relative(out32, want) < 0.1


@pytest.mark.parametrize("method", ["blur", "aps"])
def test_feature_jit_trace_passes_its_own_checks(method):
    """torch.jit.trace re-traces and compares the graphs (check_trace=True); it used to fail ('graphs differed')."""
    model, _ = antialias(make("tv_resnet18"), method, circular=method == "aps")
    x = shifted_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and TracerWarnings about fixed sizes
        traced = torch.jit.trace(model, x, check_trace=True)
    with torch.no_grad():
        assert relative(traced(x), model(x)) < RTOL[torch.float32]
        if method == "aps":
            assert invariance_gap(traced(x)) < 1e-5


def test_feature_strict_export_dynamic_batch_and_compile_of_aps():
    model, _ = antialias(make("tv_resnet18"), "aps", circular=True)
    x = shifted_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo notes the side effect of SharedPhase keeping the phase
        strict = torch.export.export(model, (x,), strict=True)  # dynamo cannot trace eager's context variable
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: no graph break at all
    other = x[[6, 2, 0]]  # another batch size, the tie image first
    with torch.no_grad():
        assert relative(strict.module()(x), model(x)) < RTOL[torch.float32]
        assert relative(dynamic.module()(other), model(other)) < RTOL[torch.float32]
        assert relative(compiled(x), model(x)) < RTOL[torch.float32]


def test_feature_blur_before_placement_exports():
    model, _ = antialias(make("tv_resnet18"), "blur", placement="before")
    x = shifted_inputs()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        want = model(x)
        assert relative(exported.module()(x), want) < RTOL[torch.float32]
    assert relative(run_onnx(onnx_legacy(model, (x,)), x)[0], want) < RTOL[torch.float32]


# --- the APS choice in an exported graph, phase for phase ------------------------------------------------------

class PhaseProbe(nn.Module):
    """The kept component and the APS phase, as graph outputs."""

    def forward(self, x):
        return aps_pool2d(x, return_phase=True)


def near_tie_batch(dtype=torch.float32) -> torch.Tensor:
    """(16, 256, 4, 4): random maps under the four shifts of one period, exact ties and a near-tie.

    The near-tie (sample 14): components 0 and 1 differ in energy by 1e-6 relative (float32) or 3e-14
    (float64), below the clear margin; their quantised energies tie (256 channels: 2**16 levels in float32,
    2**43 in float64), so the exact rule keeps phase 0 where the plain energies would keep phase 1.
    """
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(1, 256, 4, 4, generator=g) for _ in range(3)]
    samples = [torch.roll(m, (dy, dx), (-2, -1)) for m in maps for dy in (0, 1) for dx in (0, 1)]
    samples.append(torch.full((1, 256, 4, 4), 0.5))  # every component equal
    samples.append(torch.randn(1, 256, 1, 4, generator=g).expand(1, 256, 4, 4).clone())  # rows repeat: ties
    near = torch.zeros(1, 256, 4, 4, dtype=dtype)
    near[0, 0, 0, 0] = near[0, 0, 0, 1] = 1.0
    near[0, 1, 0, 0], near[0, 1, 0, 1] = 0.75, 0.75 + (1e-6 if dtype == torch.float32 else 2e-14)
    samples += [near, torch.roll(near, (1, 0), (-2, -1))]
    return torch.cat([sample.to(dtype) for sample in samples])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_feature_exported_aps_chooses_the_eager_phases_including_near_ties(dtype):
    x = near_tie_batch(dtype)
    want_out, want_phase = aps_pool2d(x, return_phase=True)
    plain = _plain_energies(x, 2).argmax(dim=1)
    # the batch exercises both rules: the near-tie is decided by the exact rule against the plain energies
    assert want_phase[14].item() == 0 and plain[14].item() == 1
    assert want_phase[12].item() == 0  # the constant map: the lowest index
    probe = PhaseProbe().eval()
    exported = torch.export.export(probe, (x,))
    results = {"torch.export": exported.module()(x), "onnx dynamo": run_onnx(onnx_dynamo(exported, (x,)), x),
               "onnx legacy": run_onnx(onnx_legacy(probe, (x,)), x)}
    for label, (out, phase) in results.items():
        assert torch.equal(phase.long(), want_phase), (label, phase.tolist(), want_phase.tolist())
        assert torch.equal(out, want_out), label  # the same component, bit for bit
    # negative control: a graph that kept only the plain argmax would differ on the near-tie
    assert not torch.equal(plain, want_phase)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), channels=st.sampled_from([1, 3, 256]),
       stride=st.integers(2, 3), cells=st.integers(1, 3), ties=st.booleans(),
       dtype=st.sampled_from([torch.float32, F64, torch.float16]))
def test_property_graph_choice_equals_eager_choice(seed, batch, channels, stride, cells, ties, dtype):
    g = torch.Generator().manual_seed(seed)
    size = stride * cells
    x = torch.randn(batch, channels, size, size, generator=g)
    if ties:  # components holding the same values, and near-ties a rounding apart
        x = x[..., :1, :].expand(-1, -1, size, -1).clone()
        x[0, 0, -1, 0] += 1e-6
    x = x.to(dtype)
    assert torch.equal(_phase_graph(x, stride), _phase(x, stride))


# --- the graph formulations of the layers equal their eager forms ----------------------------------------------

@pytest.fixture
def graph_capture(monkeypatch):
    """Make the layers take their graph-capture formulations while running eagerly."""
    for module in (blur_module, aps_module, ops_module):
        monkeypatch.setattr(module, "in_graph_capture", lambda: True)


@settings(max_examples=40, deadline=None)
@given(filter_size=st.integers(1, 7), stride=st.integers(1, 3), h=st.integers(4, 11), w=st.integers(4, 11),
       padding_mode=st.sampled_from(PADDING_MODES), seed=st.integers(0, 2**16))
def test_property_blur_graph_formulation_equals_eager(filter_size, stride, h, w, padding_mode, seed):
    x = torch.randn(2, 3, h, w, dtype=F64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(_blur_graph(x, filter_size, stride, padding_mode),
                               blur_pool2d(x, filter_size, stride, padding_mode), rtol=0, atol=1e-12)


def test_graph_formulations_equal_eager_for_layers_and_dense_pools(graph_capture, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 12, 10, dtype=F64)
    assert blur_module.in_graph_capture()
    graph = {"blur": blur_pool2d(x, 5, 2, "reflect"), "aps": aps_pool2d(x, 2, 3, "circular"),
             "phase": aps_phase(x)}
    pools = [nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(3, 2, 1, dilation=2),
             nn.AvgPool2d(3, 2, 1)]
    for pool in pools:
        for circular in (False, True):
            graph[(repr(pool), circular)] = DensePool2d(pool, circular)(x)
    monkeypatch.undo()
    assert not blur_module.in_graph_capture()
    torch.testing.assert_close(graph["blur"], blur_pool2d(x, 5, 2, "reflect"), rtol=0, atol=1e-12)
    torch.testing.assert_close(graph["aps"], aps_pool2d(x, 2, 3, "circular"), rtol=0, atol=1e-12)  # blur rounding
    assert torch.equal(graph["phase"], aps_phase(x))
    for pool in pools:
        for circular in (False, True):
            want = DensePool2d(pool, circular)(x)
            torch.testing.assert_close(graph[(repr(pool), circular)], want, rtol=0, atol=1e-12)
            if not circular:  # and its samples are the pool's
                torch.testing.assert_close(want[..., ::2, ::2], pool(x), rtol=0, atol=1e-12)


def test_graph_blur_keeps_float16_finite(graph_capture):
    x = torch.full((1, 2, 16, 16), 1000.0, dtype=torch.float16)
    for filter_size in range(1, 8):
        out = blur_pool2d(x, filter_size, 2, "replicate")
        assert torch.isfinite(out).all() and (out == 1000).all()
