"""Which modules' outputs get a quantizer (``quantize_residuals``) and which layers then read that quantizer as
their input quantizer, one test per graph pattern, and what those quantizers do in the model GETA prepares."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import geta
from geta.core.inputs import ExampleInputs
from geta.graph.capture import capture
from geta.graph.residual import Source, residual_sources
from geta.models.cifar import ResNet20
from geta.quant.prepare import INPUT_QUANTIZED_BY, INPUT_QUANTIZER, OUTPUT_QUANTIZER, find_layers
from zoo import DepthwiseNet


def _found(model: nn.Module, x: Tensor, excluded: set[str] = frozenset()) -> list[Source]:
    """The sources of ``model``, every layer that reads activations not in ``excluded`` a candidate reader."""
    readers = [layer.name for layer in find_layers(model) if layer.spec.inputs and layer.name not in excluded]
    return residual_sources(capture(model, ExampleInputs.from_user(x)), model, set(excluded), readers)


def _sources(model: nn.Module, x: Tensor, excluded: set[str] = frozenset()) -> list[str]:
    return [source.name for source in _found(model, x, excluded)]


class ConvAdd(nn.Module):
    """Two convs without batch norm added, and a conv whose output is scaled before an add (not its output)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) + self.b(x) + 2 * self.c(x)


class BiasAdd(nn.Module):
    """A conv output plus a broadcast tensor: not a residual of two same-shaped tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.shift = nn.Parameter(torch.zeros(4, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.shift


class Block(nn.Module):
    """A conv with a residual add and a relu after it: the block's output is ``relu(x + conv(x))``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv(x))


class Stream(nn.Module):
    """A stem conv and two blocks in a row, each block's input read by its conv and its add; ``extra`` also reads
    the first block's output elsewhere: ``"sigmoid"`` (a float op), ``"relu"`` (the second block's conv reads it
    through a relu), ``"twice"`` (the first block called again)."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.first, self.second = Block(), Block()
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(self.stem(x))
        out = self.second(h) if self.extra != "relu" else torch.relu(h + self.second.conv(torch.relu(h)))
        if self.extra == "sigmoid":
            out = out * torch.sigmoid(h)
        if self.extra == "twice":
            out = self.first(out)
        return out


class Branches(nn.Module):
    """A module ReLU's output read by two convs and no add (their outputs concatenated)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.left, self.right = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return torch.cat([self.left(h), self.right(h)], dim=1)


class TwoOutputs(nn.Module):
    """A module returning two tensors, one of which goes into a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.relu(self.conv(x))
        return y, 2 * y


class UsesTwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TwoOutputs()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y, z = self.pair(x)
        return y + self.conv(y) + z


def test_resnet_block_outputs_and_projection_shortcuts() -> None:
    """ResNet20: each block's second batch norm and each projection shortcut's batch norm; and each block output
    that goes into the next block (its conv1 and its identity add, or its conv1 and its projection shortcut),
    unsigned (after the ReLU), read by those convs through the block's quantizer. The stem's ReLU is functional
    in the root forward (no module's output): its input, the stem's batch norm, gets the unsigned quantizer
    (Q(y) = Q(relu(y))), read by blocks.0.conv1."""
    model = ResNet20(in_channels=1).eval()
    found = _found(model, torch.randn(2, 1, 16, 16))
    names = [source.name for source in found]
    blocks = {f"blocks.{i}" for i in range(8)}
    assert set(names) == {*(f"blocks.{i}.bn2" for i in range(9)), "blocks.3.shortcut.1", "blocks.6.shortcut.1",
                          *blocks, "blocks.8", "bn"}
    assert found[0] == Source("bn", ("blocks.0.conv1",), unsigned=True)
    assert names == sorted(names, key=list(dict(model.named_modules())).index)
    by_name = {source.name: source for source in found}
    for i in range(8):
        expected = (f"blocks.{i + 1}.conv1",) + ((f"blocks.{i + 1}.shortcut.0",) if i in (2, 5) else ())
        assert by_name[f"blocks.{i}"] == Source(f"blocks.{i}", expected, unsigned=True)
    assert by_name["blocks.8"] == Source("blocks.8", (), unsigned=True)  # pooled into fc
    assert all(not by_name[name].readers and not by_name[name].unsigned for name in names
               if name not in {*blocks, "blocks.8", "bn"})


def test_inverted_residual_projection_and_block_outputs() -> None:
    """MobileNetV2-style blocks: the projection's batch norm (``project.1``) of each block; the stem's module ReLU
    (unsigned) and the first block's add output (signed), each read by the next expansion conv and the next add;
    the last block's output (signed), which a mean pools into the linear head."""
    found = _found(DepthwiseNet().eval(), torch.randn(2, 3, 8, 8))
    assert found == [Source("stem.2", ("blocks.0.expand.0",), True), Source("blocks.0", ("blocks.1.expand.0",)),
                     Source("blocks.0.project.1"), Source("blocks.1"), Source("blocks.1.project.1")]


def test_block_outputs_read_by_the_next_conv_and_add() -> None:
    """The stem conv's output (signed) and the first block's (after its ReLU: unsigned), each read by the next
    block's conv and its add; each block's conv output (into its add); the second block's output is the
    model's, read by no add."""
    assert _found(Stream().eval(), torch.randn(2, 3, 8, 8)) == [
        Source("stem", ("first.conv",)), Source("first", ("second.conv",), True), Source("first.conv"),
        Source("second.conv")]


class RootRelu(nn.Module):
    """conv-bn and a functional ReLU in the root forward, its output read by a conv and the add; ``extra``: the
    batch norm's output is read elsewhere too."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.conv, self.bn, self.conv2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        h = torch.relu(y)
        out = h + self.conv2(h)
        return out * torch.sigmoid(y) if self.extra else out


@pytest.mark.parametrize("extra", [False, True])
def test_a_functional_relu_of_a_module_output(extra: bool) -> None:
    """``relu(bn(...))`` computed in the root forward: the batch norm gets the (unsigned) quantizer, read by conv2
    through the ReLU; not when the batch norm's output is read elsewhere too."""
    found = _found(RootRelu(extra).eval(), torch.randn(2, 3, 8, 8))
    assert found == ([Source("conv2")] if extra else [Source("bn", ("conv2",), True), Source("conv2")])


def test_an_output_read_by_two_layers_and_no_add() -> None:
    assert _found(Branches().eval(), torch.randn(2, 3, 8, 8)) == [Source("stem.1", ("left", "right"), True)]


@pytest.mark.parametrize("extra", ["sigmoid", "relu", "twice"])
def test_an_output_read_elsewhere_or_a_module_called_twice_is_not_a_source(extra: str) -> None:
    """A block output also read by an op that is neither a residual add nor a quantized layer (which would then
    read a quantized value), or a block called twice (one hook would quantize both calls), gets no quantizer;
    the stem conv's output, an add operand, still does."""
    sources = _sources(Stream(extra).eval(), torch.randn(2, 3, 8, 8))
    assert "first" not in sources and "stem" in sources


def test_one_of_two_outputs_is_not_a_source() -> None:
    """``y`` goes into the add and is read by ``conv`` but is one of ``pair``'s two outputs: not quantized, nor is the
    conv output before its ReLU, which ``2 * y`` reads too (``conv``'s own output, into the add, is)."""
    assert _sources(UsesTwoOutputs().eval(), torch.randn(2, 4, 8, 8)) == ["conv"]


class TorchvisionBlock(nn.Module):
    """torchvision's ``BasicBlock``: one ReLU module called twice, the residual added in place."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.relu(out)


class TorchvisionStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.layer = nn.Sequential(TorchvisionBlock(), TorchvisionBlock())
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.layer(self.stem(x))), 1))


def test_a_block_whose_output_comes_from_a_module_called_twice() -> None:
    """torchvision-style blocks: the output is the ReLU module's, which each block calls twice, so the block
    (called once) gets the quantizer, unsigned, read by the next block's conv1 (the last block's: pooled into
    fc); the in-place residual add of a quantized batch-norm output trains (backward runs)."""
    model = TorchvisionStyle()
    found = _found(model.eval(), torch.randn(2, 3, 8, 8))
    assert found == [Source("stem.2", ("layer.0.conv1",), True), Source("layer.0", ("layer.1.conv1",), True),
                     Source("layer.0.bn2"), Source("layer.1", (), True), Source("layer.1.bn2")]
    g = geta.GETA(model.train(), torch.randn(2, 3, 8, 8), quantize="weights+activations", exponent="fixed",
                  quantize_residuals=True)
    g.model(torch.randn(4, 3, 8, 8)).square().sum().backward()
    assert all(q.d.grad is not None for q in g.output_quantizers.values())


class Pooled(nn.Module):
    """conv, batch norm and a module ReLU, pooled into a linear classifier by ``pool``: ``"adaptive"``
    (``nn.AdaptiveAvgPool2d`` and a flatten), ``"mean"`` (``x.mean((2, 3))``), ``"avg"`` (``F.avg_pool2d`` and a
    view), ``"max"`` (``nn.AdaptiveMaxPool2d``), ``"sigmoid"`` (a float op between the pool and the linear) or
    ``"elsewhere"`` (the ReLU's output also scales the logits)."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        self.kind = pool

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.kind == "mean":
            return self.fc(h.mean((2, 3)))
        if self.kind == "avg":
            return self.fc(nn.functional.avg_pool2d(h, 8).view(len(h), -1))
        pooled = torch.flatten(self.pool(h), 1)
        if self.kind == "sigmoid":
            return self.fc(torch.sigmoid(pooled))
        return self.fc(pooled) * h.amax() if self.kind == "elsewhere" else self.fc(pooled)


@pytest.mark.parametrize("pool", ["adaptive", "mean", "avg"])
def test_a_stream_averaged_into_a_quantized_layer(pool: str) -> None:
    """The ReLU's output, averaged into the classifier, gets an unsigned quantizer; the classifier keeps its own
    input quantizer (an average of levels is not a level), so the quantizer has no readers."""
    assert _found(Pooled(pool).eval(), torch.randn(2, 3, 8, 8)) == [Source("features.2", (), True)]


@pytest.mark.parametrize("pool", ["max", "sigmoid", "elsewhere"])
def test_a_max_pool_a_float_op_or_another_reader_gives_no_pooled_source(pool: str) -> None:
    """A max pool selects values (the export moves the classifier's quantizer above it); a float op between the
    pool and the classifier, or another reader of the stream, leaves the stream float."""
    assert _found(Pooled(pool).eval(), torch.randn(2, 3, 8, 8)) == []


class Fire(nn.Module):
    """A SqueezeNet fire module: a squeezing conv read by two expanding convs, whose ReLU outputs are
    concatenated; ``after`` is what reads the concatenation: ``"conv"`` (a conv, through a max pool),
    ``"dropout"`` (a conv, through dropout, as SqueezeNet's classifier), ``"two"`` (two convs), ``"norm"`` (a
    batch norm, then a conv, as in DenseNet) or ``"output"``."""

    def __init__(self, after: str) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.e1, self.e1_act = nn.Conv2d(4, 4, 1), nn.ReLU()
        self.e3 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.next, self.other = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.after = after

    def forward(self, x: Tensor) -> Tensor:
        h = self.squeeze(x)
        joined = torch.cat([self.e1_act(self.e1(h)), torch.relu(self.e3(h))], dim=1)
        if self.after == "conv":
            return self.next(nn.functional.max_pool2d(joined, 2))
        if self.after == "dropout":
            return self.next(nn.functional.dropout(joined, 0.5, self.training))
        if self.after == "two":
            return self.next(joined) + self.other(joined)
        return self.next(self.norm(joined)) if self.after == "norm" else joined


@pytest.mark.parametrize("after", ["conv", "dropout", "two"])
def test_the_inputs_of_a_concatenation_that_quantized_layers_read(after: str) -> None:
    """Both branches' ReLU outputs get unsigned quantizers: the module ReLU's at its module, the functional
    ReLU's at the conv before it. They read nothing else, so they take no readers; the squeezing ReLU is
    quantized once for the two convs that read it."""
    found = _found(Fire(after).eval(), torch.randn(2, 3, 8, 8))
    assert Source("e1_act", (), True) in found and Source("e3", (), True) in found
    assert Source("squeeze.1", ("e1", "e3"), True) in found


def test_a_concatenation_that_the_model_returns_leaves_its_inputs_float() -> None:
    assert _sources(Fire("output").eval(), torch.randn(2, 3, 8, 8)) == ["squeeze.1"]


def test_the_inputs_of_a_concatenation_that_a_batch_norm_reads() -> None:
    """DenseNet's pattern: a batch norm reads the concatenation, so it cannot run on codes, but each branch is the
    ReLU of a conv output that only the concatenation reads: quantized there (unsigned, no readers), so that each
    expanding conv runs on integers; the concatenation and the batch norm read the dequantized values."""
    found = _found(Fire("norm").eval(), torch.randn(2, 3, 8, 8))
    assert found == [Source("squeeze.1", ("e1", "e3"), True), Source("e1_act", (), True), Source("e3", (), True)]


class Inception(nn.Module):
    """Two Inception-style blocks: three branches, one of them a max pooling then a conv, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU())
        self.blocks = nn.ModuleList([InceptionBlock(6), InceptionBlock(12)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class InceptionBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, 4, 3, padding=1), nn.ReLU())
        self.pooled = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pooled(nn.functional.max_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.a(x), self.b(x), pooled], dim=1)


def test_a_layer_reading_through_a_max_pool_shares_the_quantizer() -> None:
    """The stem's and the first block's outputs are each read by two convs and, through a max pooling, by a
    third: quantized once, read by all three; the first block's branches are concatenated for them, so each
    branch's ReLU is quantized too; the second block's output is the model's, so its branches stay float."""
    found = _found(Inception().eval(), torch.randn(2, 3, 8, 8))
    assert Source("stem.1", ("blocks.0.a.0", "blocks.0.b.0", "blocks.0.pooled.0"), True) in found
    assert Source("blocks.0", ("blocks.1.a.0", "blocks.1.b.0", "blocks.1.pooled.0"), True) in found
    assert {source.name for source in found} == {"stem.1", "blocks.0", "blocks.0.a.1", "blocks.0.b.1",
                                                  "blocks.0.pooled.1"}


def test_convs_without_batch_norm_and_a_scaled_operand() -> None:
    assert _sources(ConvAdd().eval(), torch.randn(2, 3, 8, 8)) == ["a", "b"]


def test_broadcast_add_is_not_a_residual() -> None:
    assert _sources(BiasAdd().eval(), torch.randn(2, 3, 8, 8)) == []


def test_full_precision_layers_are_left_out() -> None:
    """A skipped conv gets no output quantizer, nor does the batch norm right after it; a block output that a
    skipped conv reads is not quantized (that conv's input stays float)."""
    model = ResNet20(in_channels=1).eval()
    sources = _sources(model, torch.randn(2, 1, 16, 16), {"blocks.0.conv2", "blocks.3.shortcut.0", "blocks.5.conv1"})
    assert "blocks.0.bn2" not in sources and "blocks.3.shortcut.1" not in sources and "blocks.1.bn2" in sources
    assert "blocks.2" not in sources and "blocks.4" not in sources and "blocks.5" in sources
    # the stem's batch norm, after a skipped conv, still: its ReLU output is read by quantized blocks.0.conv1
    assert "bn" in _sources(model, torch.randn(2, 1, 16, 16), {"conv"})


def test_geta_quantizes_residuals_and_qasso_projects_their_bits() -> None:
    """GETA(quantize_residuals=True): output quantizers on the sources (unsigned after a ReLU), calibrated, counted
    among the activation quantizers that QASSO projects into act_bits, and passed through when the probe compares;
    a layer reading a source's output takes that quantizer as its input quantizer and does not apply it again."""
    torch.manual_seed(0)
    model = DepthwiseNet()
    x = torch.randn(4, 3, 8, 8)
    g = geta.GETA(model, x, quantize="weights+activations", exponent="fixed", quantize_residuals=True)
    modules = dict(g.model.named_modules())
    assert set(g.output_quantizers) == set(_sources(model.eval(), x))
    for name, quantizer in g.output_quantizers.items():
        assert getattr(modules[name], OUTPUT_QUANTIZER) is quantizer and quantizer.signed == (name != "stem.2")
        assert float(quantizer.q_m.detach()) > 0
    expand = g.model.blocks[0].expand[0]
    assert getattr(expand, INPUT_QUANTIZER) is g.output_quantizers["stem.2"]
    assert getattr(expand, INPUT_QUANTIZED_BY) == "stem.2"
    assert next(layer for layer in g.layers if layer.name == "blocks.0.expand.0").input_quantizer \
        is g.output_quantizers["stem.2"]
    opt = g.qasso(lr=0.01, target_sparsity=0.3, total_steps=20, act_bits=(4, 6))
    assert all(sum(q is p for p in opt.act_quantizers) == 1 for q in g.output_quantizers.values())
    for _ in range(20):
        opt.zero_grad()
        g.model(x).square().mean().backward()
        opt.step()
    assert all(4 <= float(q.integer_bits()) <= 6 for q in g.output_quantizers.values())
    row = next(r for r in g.report().layers if r.name == "blocks.0.expand.0")
    assert row.act_bits == pytest.approx(float(g.output_quantizers["stem.2"].integer_bits()))
    compact = g.construct_subnet()
    assert any(hasattr(m, OUTPUT_QUANTIZER) for m in compact.modules())
    assert getattr(compact.blocks[0].expand[0], INPUT_QUANTIZER) is getattr(compact.stem[2], OUTPUT_QUANTIZER)


def test_a_shared_input_quantizer_runs_once() -> None:
    """The reader's input is quantized once, by the source's quantizer (the reader's pre-hook passes it through):
    one call of that quantizer per forward, and the block computes relu(h + conv(h)) on the quantized h."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    g = geta.GETA(Stream(), x, quantize="weights+activations", quantize_residuals=True, initial_act_bits=4)
    quantizer = g.output_quantizers["first"]
    assert getattr(g.model.second.conv, INPUT_QUANTIZER) is quantizer
    calls: list[Tensor] = []
    handle = quantizer.register_forward_hook(lambda _module, _args, out: calls.append(out))
    with torch.no_grad():
        out = g.model.eval()(x)
    handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(out, torch.relu(calls[0] + g.model.second.conv(calls[0])), rtol=0, atol=0)
        assert torch.equal(quantizer(calls[0]), calls[0])  # what a second application would have given anyway


@pytest.mark.parametrize("given_model", [False, True])
def test_save_and_load_keep_shared_and_unsigned_output_quantizers(given_model: bool, tmp_path: Path) -> None:
    """geta.save / geta.load (from the file alone, or into a freshly built model) keep the unsigned output
    quantizers and the layers that read them, and the signed ones' two's-complement levels, with the same
    outputs."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    g = geta.GETA(ResNet20(in_channels=1, width=8), x, quantize="weights+activations", exponent="fixed",
                  quantize_residuals=True)
    g.zero_random_groups(0.2, seed=1)
    compact = g.construct_subnet().eval()
    geta.save(compact, tmp_path / "m.safetensors")
    loaded = geta.load(tmp_path / "m.safetensors", model=ResNet20(in_channels=1, width=8) if given_model else None)
    assert not getattr(loaded.blocks[0], OUTPUT_QUANTIZER).signed
    assert not getattr(loaded.bn, OUTPUT_QUANTIZER).signed
    assert getattr(loaded.blocks[1].conv1, INPUT_QUANTIZED_BY) == "blocks.0"
    assert getattr(loaded.blocks[0].conv1, INPUT_QUANTIZED_BY) == "bn"
    assert not hasattr(loaded.blocks[0].conv2, INPUT_QUANTIZED_BY)
    assert getattr(loaded.blocks[0].bn2, OUTPUT_QUANTIZER).twos_complement
    assert getattr(loaded.conv, INPUT_QUANTIZER).twos_complement  # the image input: signed
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), compact(x), rtol=0, atol=0)


def test_quantize_residuals_needs_quantized_activations() -> None:
    with pytest.raises(geta.GetaError, match="quantize_residuals=True needs quantize='weights\\+activations'"):
        geta.GETA(ResNet20(in_channels=1), torch.randn(2, 1, 16, 16), quantize="weights", quantize_residuals=True)


class FloatFunctions(nn.Module):
    """Kernels whose outputs only functions that run in float read: conv, batch norm and hardswish modules, a conv
    into a
    functional SiLU, a conv into a hardsigmoid gate, a linear into GELU and a conv into a LayerNorm through a
    permutation; ``extra`` is what else reads the batch norm's output: ``"add"`` (a broadcast add, a
    float op) or ``"relu"`` (a ReLU beside the hardswish)."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Hardswish()
        self.swish, self.gate, self.mixer = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 6, 1)
        self.norm, self.linear, self.head = nn.LayerNorm(6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        h = self.act(y)
        if self.extra == "add":
            h = h + y.amax()
        if self.extra == "relu":
            h = h + torch.relu(y)
        h = nn.functional.silu(self.swish(h))
        h = h * nn.functional.hardsigmoid(self.gate(h))
        h = self.norm(self.mixer(h).permute(0, 2, 3, 1))
        return self.head(nn.functional.gelu(self.linear(h)))


def test_kernel_outputs_that_float_functions_read() -> None:
    """Each convolution's output that only a float function reads (directly, or through a permutation) is quantized
    where it is produced, signed, with no readers: the batch norm (its conv's only reader), the conv before the
    SiLU, the gate conv and the conv before the permutation and LayerNorm; not the linear before the GELU (an
    integer runtime multiplies into a float output) nor the head, whose output is the model's."""
    assert _found(FloatFunctions().eval(), torch.randn(2, 3, 8, 8)) == [
        Source("bn"), Source("swish"), Source("gate"), Source("mixer")]


@pytest.mark.parametrize("extra", ["add", "relu"])
def test_a_kernel_output_read_by_another_op_too_stays_float(extra: str) -> None:
    """The batch norm's output read by an op beside the hardswish: not quantized (that op would read the
    quantized value); the other kernels still are."""
    sources = _sources(FloatFunctions(extra).eval(), torch.randn(2, 3, 8, 8))
    assert "bn" not in sources and {"swish", "gate", "mixer"} <= set(sources)


def test_a_batch_norm_after_a_full_precision_conv_gets_no_quantizer_for_its_function() -> None:
    """With the first conv kept at full precision, its batch norm's output stays float (the conv is no integer
    kernel), and so does the gate conv's when the gate conv is."""
    sources = _sources(FloatFunctions().eval(), torch.randn(2, 3, 8, 8), {"conv", "gate"})
    assert "bn" not in sources and "gate" not in sources and "swish" in sources


def test_quantizers_before_float_functions_train() -> None:
    """GETA(quantize_residuals=True) on those kernels: each gets its output quantizer, every quantizer's step
    receives a gradient, and the hardswish reads the batch norm's quantized output (values on its levels)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    g = geta.GETA(FloatFunctions(), x, quantize="weights+activations", exponent="fixed", quantize_residuals=True)
    assert set(g.output_quantizers) == {"bn", "swish", "gate", "mixer"}
    g.model.train()
    g.model(x).square().sum().backward()
    assert all(q.d.grad is not None and bool(q.d.grad.abs().sum() > 0) for q in g.output_quantizers.values())
    seen: list[Tensor] = []
    handle = g.model.act.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    with torch.no_grad():
        g.model.eval()(x)
    handle.remove()
    quantizer = g.output_quantizers["bn"]
    assert torch.equal(quantizer(seen[0]), seen[0])


class Excitation(nn.Module):
    """RegNet-Y's squeeze-excitation: a conv-bn-ReLU whose output only the gating reads (an average pool into a
    conv, and the product with the sigmoid gate), then a projection conv; ``extra``: the ReLU's output also
    goes to the model's output."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.unit = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc1, self.fc2, self.project = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1), nn.Conv2d(8, 4, 1)
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = self.unit(x)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(h, 1)))))
        out = self.project(h * gate)
        return (out, h) if self.extra else out


def test_a_rectified_kernel_output_that_only_the_gating_reads() -> None:
    """The ReLU module's output, read only by the pooling and the product, gets an unsigned quantizer (its conv
    then runs on integers), and so does the gate conv before its sigmoid; not when the ReLU's output is also the
    model's."""
    assert _found(Excitation().eval(), torch.randn(2, 3, 8, 8)) == [Source("unit.2", (), True), Source("fc2")]
    assert _sources(Excitation(extra=True).eval(), torch.randn(2, 3, 8, 8)) == ["fc2"]


class ReturnsFunction(nn.Module):
    """A conv into a SiLU into a conv into a sigmoid that the model returns."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.last(nn.functional.silu(self.first(x))))


def test_a_float_function_whose_result_the_model_returns_does_not_count() -> None:
    """The first conv's output gets its quantizer (the SiLU's result is read inside the model), the last conv's
    not: the model returns its sigmoid."""
    assert _sources(ReturnsFunction().eval(), torch.randn(2, 3, 8, 8)) == ["first"]


class DenseStages(nn.Module):
    """DenseNet's pattern, as torchvision writes it: a stem conv-bn-ReLU into a max pool, dense layers that each
    batch-normalize the concatenation of every earlier feature map (``torch.cat`` of one tensor for the first),
    and a transition whose conv output is averaged, then read by the next block's concatenations only;
    ``returns``: the model returns the averaged transition output too."""

    def __init__(self, returns: bool = False) -> None:
        super().__init__()
        self.returns = returns
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.transition = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 6, 1))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
        self.norm, self.head = nn.BatchNorm2d(10), nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = nn.functional.max_pool2d(self.stem(x), 2)
        h = torch.cat([h, self.layer1(torch.cat([h], 1))], 1)
        pooled = nn.functional.avg_pool2d(self.transition(h), 2)
        h = torch.cat([pooled, self.layer2(torch.cat([pooled], 1))], 1)
        out = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(h)), 1), 1))
        return (out, pooled) if self.returns else out


def test_kernel_outputs_pooled_into_concatenations() -> None:
    """The stem's ReLU output, max-pooled, and the transition conv's output, averaged, are read by concatenations
    alone: each gets its quantizer where it is produced (unsigned after the ReLU), so that the stem conv and the
    transition conv run on integers, as each dense layer's conv does (the last ReLU is the pooled stream into the
    head). Not the transition's when the model returns its averaged output."""
    assert _found(DenseStages().eval(), torch.randn(2, 3, 16, 16)) == [
        Source("stem.2", (), True), Source("layer1.2"), Source("transition.2"), Source("layer2.2"),
        Source("norm", (), True)]
    assert "transition.2" not in _sources(DenseStages(returns=True).eval(), torch.randn(2, 3, 16, 16))


class ModuleGate(nn.Module):
    """torchvision's ``SqueezeExcitation``: the gate is a sigmoid module (``gate="hard"``: a hardsigmoid), the
    gated tensor a conv-bn-``act`` output (``"relu"``, or ``"hardswish"``, a float function's output that gets no
    quantizer); ``returns``: the model returns the product too."""

    def __init__(self, act: str = "relu", gate: str = "sigmoid", returns: bool = False) -> None:
        super().__init__()
        self.unit = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU() if act == "relu" else nn.Hardswish())
        self.fc1, self.fc2, self.project = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1), nn.Conv2d(8, 4, 1)
        self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()
        self.returns = returns

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = self.unit(x)
        gated = h * self.gate(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(h, 1)))))
        out = self.project(gated)
        return (out, gated) if self.returns else out


@pytest.mark.parametrize("gate", ["sigmoid", "hard"])
def test_a_gate_module_whose_product_a_quantized_layer_reads(gate: str) -> None:
    """The gate's output gets an unsigned quantizer of its own when the tensor it multiplies is quantized (the
    ReLU's) and the product is a quantized layer's only input: an integer runtime then multiplies codes
    (QLinearMul, and QLinearSigmoid for the sigmoid)."""
    assert _found(ModuleGate(gate=gate).eval(), torch.randn(2, 3, 8, 8)) == [
        Source("unit.2", (), True), Source("fc2"), Source("gate", (), True)]


@pytest.mark.parametrize("case", ["hardswish", "returned"])
def test_a_gate_stays_float_beside_a_float_operand_or_a_returned_product(case: str) -> None:
    """Beside a hardswish output (no quantizer: the multiply could not run on codes) or when the model returns
    the product, the gate gets no quantizer."""
    model = ModuleGate(act="hardswish") if case == "hardswish" else ModuleGate(returns=True)
    assert "gate" not in _sources(model.eval(), torch.randn(2, 3, 8, 8))
