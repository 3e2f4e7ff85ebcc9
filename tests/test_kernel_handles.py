"""kernels.Kernel (one handle declares and launches a kernel template), kernels.cuda_enum (C++ enums
read from a .cu file by name) and kernels.cuda_constant (its constexpr block and tile sizes)."""
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
    monkeypatch.setenv("GPULAYERS_CACHE_DIR", str(tmp_path / "cache"))  # leave the user's cache alone

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


def test_values_of_another_type_do_not_stand_in(scratch_source, monkeypatch):
    """An int is not a bool or an enum member (1 == True, Colour(7) == 7 hash alike), nor a bool an int."""
    monkeypatch.setattr(kernels, "launch", lambda *a, **k: None)
    colour = enum.IntEnum("Colour", {"red": 0, "green": 1})
    handle = kernels.Kernel(scratch_source, "paint", flag=bool, colour=colour, vec=(0, 1))
    assert handle.template(flag=np.bool_(True), colour=colour.green, vec=np.int64(1)) == \
        "paint<{T}, true, Colour::green, 1>"
    for bad in (dict(flag=1, colour=colour.red, vec=0), dict(flag=True, colour=1, vec=0),
                dict(flag=True, colour=colour.red, vec=True), dict(flag="true", colour=colour.red, vec=0)):
        with pytest.raises(ValueError, match="paint is not declared with"):
            handle.launch(np.float32, 1, 32, (), **bad)


def test_where_keeps_only_the_combinations_that_exist(scratch_source):
    handle = kernels.Kernel(scratch_source, "copy", channels_last=bool, vec=(1, 2, 4),
                            where=lambda channels_last, vec: channels_last or vec == 1)
    assert kernels.declared()[scratch_source] == ("copy<{T}, false, 1>", "copy<{T}, true, 1>", "copy<{T}, true, 2>",
                                                  "copy<{T}, true, 4>")
    assert handle.template(channels_last=True, vec=4) == "copy<{T}, true, 4>"
    with pytest.raises(ValueError, match="excluded by where"):
        handle.template(channels_last=False, vec=2)


def test_upsampling_declares_vectors_for_channels_last_only():
    from gpulayers.layers import upsampling

    nearest = [t for t in kernels.declared()["upsampling.cu"] if t.startswith("upsample_nearest_forward<")]
    assert sorted(nearest) == sorted(["upsample_nearest_forward<{T}, false, 1>", "upsample_nearest_forward<{T}, true, 1>",
                                      "upsample_nearest_forward<{T}, true, 2>", "upsample_nearest_forward<{T}, true, 4>",
                                      "upsample_nearest_forward<{T}, true, 8>"])
    with pytest.raises(ValueError):
        upsampling.NEAREST_BACKWARD.template(channels_last=False, vec=4)


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
        "namespace a { enum class Twice : int { x, y }; }",
        "namespace b { enum class Twice : int { y, x }; }",
    ]))
    mode = kernels.cuda_enum("enums_test_only.cu", "Mode")
    assert issubclass(mode, enum.IntEnum) and mode.__name__ == "Mode"
    assert {m.name: int(m) for m in mode} == {"first": 0, "second": 5, "third": 6, "hex": 16}
    assert list(kernels.cuda_enum("enums_test_only.cu", "Empty")) == []
    for missing in ("Commented", "Plain", "Absent"):
        with pytest.raises(LookupError, match=f"defines no `enum class {missing}`"):
            kernels.cuda_enum("enums_test_only.cu", missing)
    with pytest.raises(LookupError, match="defines `enum class Twice` 2 times"):
        kernels.cuda_enum("enums_test_only.cu", "Twice")


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
        "constexpr int kNegative = -7, kTruncated = (kA - 128) / 7, kMinus = -kA * 3;",
        "constexpr int kTwice = 1;",
        "constexpr int kTwice = 2;",
        "constexpr int kShift = 1 << 8;",
        "constexpr int kZero = 1 / (kA - 8);",
        "constexpr int kFromCommonOnly = 1 << 2;  // unreadable here: no fallback to common.cuh's",
    ]))
    common = (kernels.cuda_dir() / "common.cuh").read_text()
    cuda_copy("common.cuh", common + "\nconstexpr int kFromCommonOnly = 32;\n")
    expected = {"kA": 8, "kB": 128, "kAB": 1024, "kMixed": 56, "kLocal": 5, "kNegative": -7,
                "kTruncated": -17,  # C++: -120 / 7 truncates to -17 (Python's // would give -18)
                "kMinus": -24}
    assert {name: kernels.cuda_constant("constants_test_only.cu", name) for name in expected} == expected
    cuda_copy("other_test_only.cu", "constexpr int kOwn = 3;")
    assert kernels.cuda_constant("other_test_only.cu", "kFromCommonOnly") == 32  # from common.cuh
    for missing in ("kCommented", "kAbsent"):
        with pytest.raises(LookupError, match=f"defines no `constexpr int {missing}`"):
            kernels.cuda_constant("constants_test_only.cu", missing)
    for unreadable in ("kTemplated", "kCast", "kShift", "kZero", "kFromCommonOnly"):
        with pytest.raises(LookupError, match=f"declares `constexpr int {unreadable}` with an initialiser"):
            kernels.cuda_constant("constants_test_only.cu", unreadable)
    with pytest.raises(LookupError, match="declares `constexpr int kTwice` more than once"):
        kernels.cuda_constant("constants_test_only.cu", "kTwice")

