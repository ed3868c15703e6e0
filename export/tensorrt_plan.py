"""The served TensorRT engine of a bundle (``model.plan``): one optimization profile over ``--batch-range``.

The engine is built by the ``tensorrt`` backend's builder (:func:`vitres_deploy.runtime.tensorrt.serialize_engine`:
version check, precision rules, on-disk timing cache) with the profile ``(MIN, OPT, MAX)`` on the batch
dimension instead of the single profiled shape; it is run by :class:`~vitres_deploy.runtime.tensorrt.TensorRTRunner`.
What is export-specific: which ONNX the engine is parsed from, a failed build being a failed check, and
the engine's record in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, CheckFailed, EngineBuildError
from ..runtime.base import RunnerOptions
from ..runtime.tensorrt import (
    STRONGLY_TYPED,
    cuda_device_name,
    import_tensorrt,
    precision_record,
    serialize_engine,
)


def build_plan(fp32_onnx: str | Path, typed_onnx: str | Path | None, precision: str,
               batch_range: tuple[int, int, int], *, device_id: int = 0, workspace_mb: int = 4096,
               cache_dir: str | Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine with the batch dimension profiled at ``batch_range`` (min, opt, max), and its record.

    fp32 builds from ``fp32_onnx``; fp16 and int8 (TensorRT 10 and 11) from the bundle's ``typed_onnx``, parsed
    strongly typed: the strongly typed fp16 ONNX, whose nodes kept in fp32 stay fp32 in the engine, or the int8
    ONNX of the ``tensorrt`` layout, whose Q/DQ nodes say what runs in int8. The timing cache in the
    vitres-deploy cache is read and updated. A model TensorRT cannot parse or build is a :class:`CheckFailed`.
    """
    trt = import_tensorrt()
    device = cuda_device_name(device_id)
    typed = precision in STRONGLY_TYPED
    if typed and typed_onnx is None:
        raise BackendUnavailable(f"tensorrt builds {precision} only from the bundle's {precision} ONNX")
    options = RunnerOptions(batch=batch_range[1], precision=precision, device_id=device_id,
                            workspace_mb=workspace_mb, cache_dir=Path(cache_dir) if cache_dir is not None else None)
    try:
        plan = serialize_engine(typed_onnx if typed else fp32_onnx, options, batch_range)
    except EngineBuildError as e:
        raise CheckFailed(str(e)) from None
    record = {"tensorrt": trt.__version__, "device": device, "profile": dict(zip(("min", "opt", "max"), batch_range)),
              **precision_record(precision)}
    return plan, record
