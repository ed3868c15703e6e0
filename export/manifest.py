"""The bundle manifest (``manifest.json``) as one typed document, written by ``export`` and read by ``verify``.

:class:`Manifest` holds what a bundle is (space, architecture, supernet, I/O, normalisation, classes, data),
how it was made (versions, device, artifacts, int8 quantization, tolerances) and what was checked (the
eval-split record, every check, the latency gate), with the sha256 of every other file.
:meth:`Manifest.to_dict` is the file form and :meth:`Manifest.from_dict` its reader; both keep the file's keys
and values as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from ..data import HoldoutSpec
from ..errors import BundleError, CheckFailed, VitresError, first_line
from .checks import CheckResult
from .compare import Tolerances
from .options import BatchRange

FORMAT = "vitres-deploy/bundle"
FORMAT_VERSION = 1

_R = TypeVar("_R", bound="_Record")


class BundleCorrupt(CheckFailed, BundleError):
    """A bundle's files do not match its manifest (modified, truncated or missing), or the manifest is damaged."""


class _Record:
    """A flat part of the manifest: its fields are its JSON keys."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Inverse of :meth:`to_dict`; a missing key is a :class:`KeyError`."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class SpaceRecord(_Record):
    """The search space the network comes from, as far as serving it goes."""

    name: str
    family: str
    image_size: int
    in_chans: int
    num_classes: int

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One input image: ``(in_chans, image_size, image_size)``."""
        return self.in_chans, self.image_size, self.image_size


@dataclass(frozen=True)
class ArchRecord(_Record):
    """The exported architecture: hash, short form, MACs and parameters."""

    hash: str
    short: str
    macs: int
    params: int


@dataclass(frozen=True)
class SupernetRecord(_Record):
    """The supernet the network was extracted from: file name, sha256, its recorded metrics; ``finetuned`` is
    None for the supernet's own weights, else the fine-tuned checkpoint whose weights were exported (file,
    sha256, epochs, finetune_config, metrics)."""

    file: str
    sha256: str
    metrics: dict[str, Any] | None
    finetuned: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetRecord:
        """Inverse of :meth:`to_dict`; a manifest written before fine-tuning existed has no ``finetuned``."""
        return cls(data["file"], data["sha256"], data["metrics"], data.get("finetuned"))


@dataclass(frozen=True)
class ModelInput(_Record):
    """The network's input tensor and how to make it from pixels."""

    name: str
    shape: list[str | int]
    dtype: str
    layout: str
    preprocessing: str


@dataclass(frozen=True)
class ModelOutput(_Record):
    """The network's output tensor and what it means."""

    name: str
    shape: list[str | int]
    dtype: str
    meaning: str


@dataclass(frozen=True)
class Normalization(_Record):
    """Per-channel ``mean`` and ``std`` applied after scaling pixels by ``pixel_scale``."""

    mean: list[float]
    std: list[float]
    pixel_scale: float


@dataclass(frozen=True)
class DataRecord:
    """The data set of the checks: its kind and the hold-out split (spec and digest of its indices)."""

    kind: str
    holdout: HoldoutSpec
    holdout_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "holdout": self.holdout.to_dict(), "holdout_sha256": self.holdout_sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(data["kind"], HoldoutSpec.from_dict(data["holdout"]), data["holdout_sha256"])


@dataclass(frozen=True)
class EvaluationRecord(_Record):
    """The pass over the eval split: which images, the seed of the check batch, PyTorch fp32's top-1 and
    every predictor's top-1 (``pytorch`` and each artifact)."""

    split: str
    limit: int | None
    images: int
    seed: int
    reference_runtime: str
    reference_top1: float
    top1: dict[str, float]


@dataclass(frozen=True)
class ArtifactRecord:
    """One served file (``model.onnx``, ``model.plan``): format, precision, the runtime that checked it, the
    format's own record (``details``: the ONNX simplification, or the engine's TensorRT version, device and
    profile), and its sha256 and size."""

    format: str
    precision: str
    checked_on: str
    details: dict[str, Any]
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the details sit between ``checked_on`` and ``sha256``."""
        return {"format": self.format, "precision": self.precision, "checked_on": self.checked_on, **self.details,
                "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactRecord:
        """Inverse of :meth:`to_dict`."""
        known = ("format", "precision", "checked_on", "sha256", "bytes")
        return cls(data["format"], data["precision"], data["checked_on"],
                   {k: v for k, v in data.items() if k not in known}, data["sha256"], data["bytes"])


@dataclass
class Manifest:
    """``manifest.json``: the typed form of every key (see the module docstring); ``latency`` is None
    without a latency gate. ``files`` lists every other file of the bundle with its sha256. ``quantization``
    is how an int8 model was quantized (settings, calibration images and digest, ops left in float, share of
    compute ops quantized); None for other precisions."""

    name: str
    created: str
    vitres_deploy: str
    space: SpaceRecord
    arch: ArchRecord
    supernet: SupernetRecord
    precision: str
    opset: int
    formats: list[str]
    batch_range: BatchRange
    input: ModelInput
    output: ModelOutput
    normalization: Normalization
    class_names: list[str]
    data: DataRecord
    versions: dict[str, str]
    device: dict[str, Any]
    artifacts: dict[str, ArtifactRecord]
    tolerances: Tolerances
    max_accuracy_drop_points: float
    evaluation: EvaluationRecord
    checks: list[CheckResult]
    latency: dict[str, Any] | None
    timings_s: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file form."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "created": self.created,
            "vitres_deploy": self.vitres_deploy, "space": self.space.to_dict(), "arch": self.arch.to_dict(),
            "supernet": self.supernet.to_dict(), "precision": self.precision, "quantization": self.quantization,
            "opset": self.opset,
            "formats": list(self.formats), "batch_range": self.batch_range.to_dict(), "input": self.input.to_dict(),
            "output": self.output.to_dict(), "normalization": self.normalization.to_dict(),
            "class_names": list(self.class_names), "data": self.data.to_dict(), "versions": self.versions,
            "device": self.device, "artifacts": {rel: a.to_dict() for rel, a in self.artifacts.items()},
            "tolerances": self.tolerances.to_dict(), "max_accuracy_drop_points": self.max_accuracy_drop_points,
            "evaluation": self.evaluation.to_dict(), "checks": [c.to_dict() for c in self.checks],
            "latency": self.latency, "timings_s": self.timings_s, "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest.json") -> Manifest:
        """Inverse of :meth:`to_dict`. ``source`` names the file in errors: :class:`BundleCorrupt` when it is
        not a bundle manifest or lacks or garbles a key, :class:`BundleError` for another format version."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise BundleCorrupt(f"{source} is not a vitres-deploy bundle manifest (no \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{source} has bundle format version {data.get('format_version')}, this vitres-deploy "
                              f"reads {FORMAT_VERSION}: re-export with this version")
        if not isinstance(data.get("files"), dict) or not data["files"]:
            raise BundleCorrupt(f"{source} lists no files: the manifest is corrupt; re-export")
        try:
            return cls(
                name=data["name"], created=data["created"], vitres_deploy=data["vitres_deploy"],
                space=SpaceRecord.from_dict(data["space"]), arch=ArchRecord.from_dict(data["arch"]),
                supernet=SupernetRecord.from_dict(data["supernet"]), precision=data["precision"],
                quantization=data.get("quantization"), opset=data["opset"], formats=list(data["formats"]),
                batch_range=BatchRange.from_dict(data["batch_range"]), input=ModelInput.from_dict(data["input"]),
                output=ModelOutput.from_dict(data["output"]),
                normalization=Normalization.from_dict(data["normalization"]),
                class_names=list(data["class_names"]), data=DataRecord.from_dict(data["data"]),
                versions=dict(data["versions"]), device=dict(data["device"]),
                artifacts={rel: ArtifactRecord.from_dict(a) for rel, a in data["artifacts"].items()},
                tolerances=Tolerances(**data["tolerances"]),
                max_accuracy_drop_points=float(data["max_accuracy_drop_points"]),
                evaluation=EvaluationRecord.from_dict(data["evaluation"]),
                checks=[CheckResult.from_dict(c) for c in data["checks"]],
                latency=None if data["latency"] is None else dict(data["latency"]),
                timings_s=dict(data["timings_s"]), files=dict(data["files"]))
        except (KeyError, TypeError, ValueError, AttributeError, VitresError) as e:
            raise BundleCorrupt(f"{source} lacks or garbles {first_line(e)}: the manifest is corrupt; "
                                "re-export the bundle") from None
