"""INT8 QDQ: structure per target, calibration input checks. Agreement and accuracy are measured on
a trained checkpoint in bench/export.md, not on the tiny model (it learned nothing)."""

import pytest

from toolkit.config import ExportConfig, Int8Config, Int8Target, Precision


def _int8_weight_peak(model) -> int:
    """The largest |value| of the graph's int8 initializers (its quantized weights)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max())
               for t in model.graph.initializer if t.data_type == TensorProto.INT8)


def _zero_points(model):
    inits = {t.name: t for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def test_tensorrt_target_is_symmetric_signed_qdq(tiny_int8):
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(tiny_int8.path))
    zps = _zero_points(m)
    assert zps and all(z.data_type == TensorProto.INT8 for z in zps)
    assert all(np.all(numpy_helper.to_array(z) == 0) for z in zps)
    assert {o.domain: o.version for o in m.opset_import}[""] >= 13
    assert tiny_int8.checks["int8_weights"] > 0
    assert _int8_weight_peak(m) == 127  # full 8 bits: TensorRT's int8 kernels do not saturate


def test_every_matmul_and_conv_reads_dequantized_inputs_and_softmax_is_float(tiny_int8):
    import onnx

    m = onnx.load(str(tiny_int8.path))
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    compute = [n for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert compute
    for n in compute:
        assert producer.get(n.input[0]) == "DequantizeLinear", n.name
    for n in m.graph.node:
        if n.op_type == "Softmax":
            assert producer.get(n.input[0]) != "DequantizeLinear"


def test_weights_are_per_channel(tiny_int8):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(tiny_int8.path))
    inits = {t.name: t for t in m.graph.initializer}
    scales = [numpy_helper.to_array(inits[n.input[1]]) for n in m.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert scales and max(s.size for s in scales) > 1


def test_metadata_records_the_calibration(tiny_int8):
    import onnx

    from toolkit.export.graph import get_metadata

    meta = get_metadata(onnx.load(str(tiny_int8.path)))
    assert meta.precision == "int8"
    assert meta.extra["target"] == "tensorrt" and meta.extra["calib_samples"] == 32


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_cpu_target_is_u8s8_and_runs(tiny_run, tiny_data, tmp_path, method):
    import onnx
    from onnx import TensorProto

    from toolkit.config import CalibMethod

    r = _export(tiny_run, tiny_data, tmp_path / "m.onnx",
                Int8Config(str(tiny_data), samples=16, target=Int8Target.cpu,
                           method=CalibMethod(method)))
    m = onnx.load(str(r.path))
    types = {z.data_type for z in _zero_points(m)}
    assert TensorProto.UINT8 in types and TensorProto.INT8 in types  # activations u8, weights s8
    # 7-bit weights: AVX2's u8 x s8 pair sums are int16 and overflow with 8-bit weights
    assert 32 < _int8_weight_peak(m) <= 64
    assert r.comparison.outputs[0].cosine > 0.9  # runs and is not garbage


def test_excluded_op_types_stay_float_and_the_rest_is_quantized(tiny_run, tiny_data, tmp_path):
    import onnx

    from toolkit.config import ComputeOp
    from toolkit.export.graph import get_metadata

    r = _export(tiny_run, tiny_data, tmp_path / "m.onnx", Int8Config(str(tiny_data), samples=16),
                exclude=(ComputeOp.Conv,))
    m = onnx.load(str(r.path))
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    inputs = {n.op_type: [] for n in m.graph.node}
    for n in m.graph.node:
        inputs[n.op_type] += [producer.get(x) for x in n.input[:2]]
    assert inputs["Conv"] and "DequantizeLinear" not in inputs["Conv"]  # image and weights float
    assert "DequantizeLinear" in inputs["MatMul"]
    meta = get_metadata(m)
    assert meta.extra["exclude_op_types"] == ["Conv"]
    ops = [n.op_type for n in m.graph.node]
    assert meta.extra["float_ops"] == ops.count("Conv")
    assert meta.extra["quantized_ops"] == ops.count("MatMul") + ops.count("Gemm")
    assert r.comparison.outputs[0].cosine > 0.9


def test_check_qdq_refuses_an_excluded_op_type_that_was_quantized(tiny_int8):
    import onnx

    from toolkit.config import ComputeOp
    from toolkit.export.graph import ExportError
    from toolkit.export.int8 import check_qdq

    with pytest.raises(ExportError, match="excluded op type"):
        check_qdq(onnx.load(str(tiny_int8.path)), Int8Target.tensorrt, (ComputeOp.Conv,))


def test_exclusions_that_make_no_sense_are_refused():
    from toolkit.config import ComputeOp, ConfigError

    with pytest.raises(ConfigError, match="nothing would be INT8"):
        ExportConfig("run", "m.onnx", Precision.int8, int8=Int8Config("data"),
                     exclude_op_types=tuple(ComputeOp))
    with pytest.raises(ConfigError, match="only applies to --precision fp16 or int8"):
        ExportConfig("run", "m.onnx", Precision.fp32, exclude_op_types=(ComputeOp.Conv,))


def test_too_few_calibration_rows_is_a_clear_error_and_no_file(tiny_run, tiny_data, tmp_path):
    from toolkit.export.graph import ExportError

    with pytest.raises(ExportError, match="fewer than the 100000 asked"):
        _export(tiny_run, tiny_data, tmp_path / "m.onnx",
                Int8Config(str(tiny_data), samples=100000))
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_calibration_data(tiny_run, tmp_path):
    from toolkit.config import ConfigError

    with pytest.raises(ConfigError, match="--calibration"):
        ExportConfig(str(tiny_run), str(tmp_path / "m.onnx"), Precision.int8)


def _export(run, data, out, int8, exclude=()):
    from toolkit.export.pipeline import export

    return export(ExportConfig(str(run), str(out), Precision.int8, data=str(data), int8=int8,
                               exclude_op_types=exclude))
