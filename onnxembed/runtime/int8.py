"""Whether this CPU multiplies an int8 graph's weights exactly.

In scope: one check of onnxruntime's uint8 x int8 kernel on this machine, and which int8 graphs it concerns.
Not in scope: choosing a variant from it (variants.py), quantizing (exporter/quantize.py).

Why: the int8 graphs quantize activations to uint8 at run time and multiply them by int8 weights. Without VNNI,
onnxruntime's x86 kernels (AVX2, AVX-512BW) add each pair of products in 16 bits, which saturate once the
weights use the whole int8 range; the exporter therefore writes 7-bit weights ("reduce_range") on such CPUs,
and full-range ones on CPUs with VNNI unless asked for 7-bit ones (--int8-target avx2). A full-range graph run
where the kernel saturates gives other vectors than the ones its accuracy was measured on
(docs/performance.md#int8-graphs-and-the-cpu-they-run-on). The check runs the kernel on one product whose exact
value is known, rather than reading CPU flags: it holds wherever onnxruntime runs (ARM, Windows, macOS) and for
whatever kernel onnxruntime picks there.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from onnxembed.manifest import Variant

logger = logging.getLogger(__name__)

# The probe: (ROWS, DEPTH) uint8 activations of 255 times (DEPTH, COLUMNS) int8 weights of 127. Each pair of
# products is 64,770, past int16's 32,767, so a kernel that adds pairs in 16 bits cannot give the exact sum
# (7-bit weights, |w| <= 64, keep every pair within 2 x 255 x 64 = 32,640).
ROWS, DEPTH, COLUMNS = 4, 64, 8
ACTIVATION, WEIGHT = 255, 127
_UINT8, _INT8, _INT32 = 2, 3, 6  # onnx TensorProto data types


def _varint(value: int) -> bytes:
    assert value >= 0, value
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _number(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _message(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor_type(elem_type: int, dims: tuple[int, ...]) -> bytes:
    shape = b"".join(_message(1, _number(1, dim)) for dim in dims)
    return _message(1, _number(1, elem_type) + _message(2, shape))  # TypeProto.tensor_type


def probe_model() -> bytes:
    """The probe's ONNX model, Y = MatMulInteger(A, B) with B a constant, serialized by hand: the runtime does
    not depend on the onnx package. Field numbers are onnx.proto's (ModelProto, GraphProto, NodeProto,
    TensorProto, ValueInfoProto, TypeProto)."""
    node = _message(1, "A") + _message(1, "B") + _message(2, "Y") + _message(4, "MatMulInteger")
    weights = (
        _number(1, DEPTH)
        + _number(1, COLUMNS)
        + _number(2, _INT8)
        + _message(8, "B")
        + _message(9, bytes([WEIGHT]) * (DEPTH * COLUMNS))
    )
    graph = (
        _message(1, node)
        + _message(2, "u8s8_probe")
        + _message(5, weights)
        + _message(11, _message(1, "A") + _message(2, _tensor_type(_UINT8, (ROWS, DEPTH))))
        + _message(12, _message(1, "Y") + _message(2, _tensor_type(_INT32, (ROWS, COLUMNS))))
    )
    return _number(1, 8) + _message(8, _number(2, 13)) + _message(7, graph)  # ir_version 8, opset 13


@lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """True when onnxruntime's CPU kernel does not give uint8 x full-range int8 products exactly here, or when
    the check itself fails (then the safe side: 7-bit weights at export, no full-range graph by "auto")."""
    import numpy as np
    import onnxruntime as ort

    from onnxembed.runtime.session import quiet_options

    options = quiet_options()
    options.intra_op_num_threads = 1  # a 4 x 64 product: no thread pool of every core for it
    try:
        session = ort.InferenceSession(probe_model(), sess_options=options, providers=["CPUExecutionProvider"])
        (product,) = session.run(None, {"A": np.full((ROWS, DEPTH), ACTIVATION, np.uint8)})
    except Exception as error:  # onnxruntime's own errors have no common base class
        logger.warning("could not check onnxruntime's int8 kernel (%s); assuming it saturates", error)
        return True
    return not bool(np.all(product == ACTIVATION * WEIGHT * DEPTH))


def full_range_int8(variant: Variant) -> bool:
    """Whether an int8 variant's weights use the whole int8 range (the manifest's "reduce_range" is false:
    made where the int8 kernel is exact)."""
    return variant.dtype == "int8" and variant.accuracy.get("reduce_range") is False
