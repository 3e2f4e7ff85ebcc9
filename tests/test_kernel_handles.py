"""kernels.Kernel (one handle declares and launches a kernel template) and kernels.cuda_enum (C++
enums read from a .cu file by name)."""
import enum

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import kernels, paths
from gpulayers.layers import recurrent, recurrent_kernels
from gpulayers.testing import assert_close


@pytest.fixture
def scratch_source():
    """A source name no family uses; its declarations are removed afterwards."""
    name = "handle_test_only.cu"
    yield name
    kernels._KERNELS.pop(name, None)


@pytest.fixture
def cuda_copy(tmp_path, monkeypatch):
    """cuda/ copied to tmp_path and made the package's kernel folder; returns a function that
    writes one source there (every cache that holds source text is cleared around it)."""
    real = kernels.cuda_dir()
    for path in real.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(kernels, "cuda_dir", lambda: tmp_path)  # NVRTC and analysis mode
    monkeypatch.setattr(paths, "cuda_dir", lambda: tmp_path)  # the simulator

    def write(name, text):
        (tmp_path / name).write_text(text)
        _clear()

    def _clear():
        for cached in (kernels._read_source, kernels.cuda_enum, kernels.cuda_constant):
            cached.cache_clear()

    yield write
    _clear()


def test_a_handle_declares_every_combination_in_order(scratch_source):
    colour = enum.IntEnum("Colour", {"red": 3, "green": 7})
    handle = kernels.Kernel(scratch_source, "paint", channels_last=bool, vec=(1, 4), colour=colour)
    other = kernels.Kernel(scratch_source, "plain")
    assert kernels.declared()[scratch_source] == (
        "paint<{T}, false, 1, Colour::red>", "paint<{T}, false, 1, Colour::green>",
        "paint<{T}, false, 4, Colour::red>", "paint<{T}, false, 4, Colour::green>",
        "paint<{T}, true, 1, Colour::red>", "paint<{T}, true, 1, Colour::green>",
        "paint<{T}, true, 4, Colour::red>", "paint<{T}, true, 4, Colour::green>",
        "plain<{T}>")
    assert handle.template(channels_last=True, vec=4, colour=colour.green) == "paint<{T}, true, 4, Colour::green>"
    assert handle.template(channels_last=np.bool_(False), vec=1, colour=colour.red) == \
        "paint<{T}, false, 1, Colour::red>"
    assert other.template() == "plain<{T}>"
    assert kernels.name_expressions(scratch_source, np.float16)[-1] == "plain<__half>"


def test_dict_spellings_take_the_dtype(scratch_source):
    kernels.Kernel(scratch_source, "reduce", acc={"stats": "Stats<{T}>", "grad": "Grad<{T}>"}, rows=(32,))
    assert kernels.name_expressions(scratch_source, np.float64) == ["reduce<double, Stats<double>, 32>",
                                                                    "reduce<double, Grad<double>, 32>"]


def test_a_launch_with_wrong_template_values_fails_before_compiling(scratch_source, monkeypatch):
    launched = []
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: launched.append(a))
    handle = kernels.Kernel(scratch_source, "paint", channels_last=bool, vec=(1, 4))
    with pytest.raises(TypeError, match=r"paint takes the template parameters \['channels_last', 'vec'\]"):
        handle.launch(np.float32, 1, 32, (), channels_last=True)
    with pytest.raises(TypeError, match="paint takes"):
        handle.launch(np.float32, 1, 32, (), channels_last=True, vec=1, colour=2)
    with pytest.raises(ValueError, match=r"not declared with vec=2 \(declared: \[1, 4\]\)"):
        handle.launch(np.float32, 1, 32, (), channels_last=True, vec=2)
    assert not launched
    handle.launch(np.float32, 3, 64, (), channels_last=False, vec=4)
    assert launched == [(scratch_source, "paint<{T}, false, 4>", np.float32, 3, 64, (), 0)]


def test_a_template_parameter_of_an_unknown_kind_is_refused(scratch_source):
    with pytest.raises(TypeError, match="template parameter vec of paint"):
        kernels.Kernel(scratch_source, "paint", vec=[1, 2])
    with pytest.raises(TypeError, match="template parameter flag of paint"):
        kernels.Kernel(scratch_source, "paint", flag=(True, False))


def test_cuda_enum_reads_names_and_values_from_the_source(cuda_copy):
    cuda_copy("enums_test_only.cu", "\n".join([
        "// enum class Commented { no };",
        "enum class Mode : unsigned int {",
        "    first,          // 0",
        "    second = 5,     /* an explicit value, then counting on */",
        "    third,",
        "    hex = 0x10",
        "};",
        "enum class Empty : int {};",
        "enum Plain { not_a_scoped_enum };",
    ]))
    mode = kernels.cuda_enum("enums_test_only.cu", "Mode")
    assert issubclass(mode, enum.IntEnum) and mode.__name__ == "Mode"
    assert {m.name: int(m) for m in mode} == {"first": 0, "second": 5, "third": 6, "hex": 16}
    assert list(kernels.cuda_enum("enums_test_only.cu", "Empty")) == []
    for missing in ("Commented", "Plain", "Absent"):
        with pytest.raises(LookupError, match=f"defines no `enum class {missing}`"):
            kernels.cuda_enum("enums_test_only.cu", missing)


def test_recurrent_enums_name_what_the_reference_implements():
    cell, activation = recurrent_kernels.Cell, recurrent_kernels.Activation
    assert [m.name for m in cell] and {m.name for m in cell} == set(recurrent.CELLS)
    assert {m.name for m in activation} == set(recurrent.ACTIVATIONS)
    assert recurrent_kernels.STEP_FORWARD.template(cell=cell.lstm) == "rnn_step_forward<{T}, Cell::lstm>"


@pytest.mark.parametrize("cls,kw", [
    (gl.LSTM, dict(activation="relu", recurrent_activation="hard_sigmoid")),
    (gl.GRU, dict(activation="tanh", recurrent_activation="sigmoid", reset_after=False)),
])
def test_recurrent_codes_follow_the_source_not_an_order(cls, kw, cuda_copy, monkeypatch, rng):
    """recurrent.cu with its Cell and Activation enumerators in another order and with other
    values: the kernels still match the reference, because Python reads the values by name."""
    text = (kernels.cuda_dir() / "recurrent.cu").read_text()
    cells = "enum class Cell : int { simple_rnn, lstm, gru, gru_reset_before };"
    acts = "enum class Activation : int { linear, tanh, sigmoid, relu, hard_sigmoid };"
    assert cells in text and acts in text
    cuda_copy("recurrent.cu", text.replace(cells, "enum class Cell : int { gru_reset_before, gru, lstm, simple_rnn };")
              .replace(acts, "enum class Activation : int { hard_sigmoid = 7, relu, tanh, linear, sigmoid };"))
    reordered = kernels.cuda_enum("recurrent.cu", "Activation")
    assert {m.name: int(m) for m in reordered} == {"hard_sigmoid": 7, "relu": 8, "tanh": 9, "linear": 10,
                                                   "sigmoid": 11}  # none keeps its value
    monkeypatch.setattr(recurrent_kernels, "Activation", reordered)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    layer = cls(7, return_sequences=True, **kw)
    y_ref = layer(x)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, grads_ref = layer.backward(dy), dict(layer.grads)
    with kernels.simulate():
        y = layer(x)
        dx = layer.backward(dy)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref, what="dx")
    for name in grads_ref:
        assert_close(layer.grads[name], grads_ref[name], what=name)


def test_cuda_constant_reads_integer_constants(cuda_copy):
    cuda_copy("constants_test_only.cu", "\n".join([
        "// constexpr int kCommented = 3;",
        "constexpr int kA = 8, kB = 128, kAB = kA * kB;  /* several in one declaration */",
        "constexpr int kMixed = (kB - kA) / 3 + 0x10;",
        "template <int N> constexpr int kTemplated = N * 2;",
        "constexpr int kCast = static_cast<int>(2.5);",
        "__device__ void f() { constexpr int kLocal = 5; }",
    ]))
    common = (kernels.cuda_dir() / "common.cuh").read_text()
    cuda_copy("common.cuh", common + "\nconstexpr int kFromCommonOnly = 32;\n")
    expected = {"kA": 8, "kB": 128, "kAB": 1024, "kMixed": 56, "kLocal": 5}
    assert {name: kernels.cuda_constant("constants_test_only.cu", name) for name in expected} == expected
    assert kernels.cuda_constant("constants_test_only.cu", "kFromCommonOnly") == 32
    for missing in ("kCommented", "kTemplated", "kCast", "kAbsent"):
        with pytest.raises(LookupError, match=f"defines no `constexpr int {missing}`"):
            kernels.cuda_constant("constants_test_only.cu", missing)

