"""TFLite metadata: what lets another runtime use an exported file as it is.

MediaPipe's ``ImageClassifier``, the TFLite Task Library and ML Kit read the TFLite
metadata schema (tensorflow/tflite-support's ``metadata_schema.fbs``, file identifier
``M001``) from the model's ``TFLITE_METADATA`` buffer: the input's normalisation (here
mean 0, std 1: the file takes raw pixels in [0, 255], its preprocessing inside), image
size and colour space, the output's score type, and the class names as a label file
packed in a zip archive appended to the model. A file with the run's unknown-photo detector
has a second output, ``unknown_score`` (1, 1), whose metadata carries the file's own
threshold as score thresholding: MediaPipe returns that head's one category only for a
photo above it, that is, for an unknown photo. Written here with ``flatbuffers`` (already a
TensorFlow dependency) and TensorFlow's own model schema, since MediaPipe's PyPI wheel ships
its metadata writer without the native module it imports (docs/export.md). No MediaPipe.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import flatbuffers
import numpy as np
from flatbuffers.table import Table

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry the readers look up
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
PARSER_VERSION = "1.0.0"  # every field written here is in the schema's first version
# Schema enums (metadata_schema.fbs).
_TENSOR_AXIS_LABELS = 2
_RGB = 1
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2
_NORMALIZATION_OPTIONS, _SCORE_THRESHOLDING_OPTIONS = 1, 3
# The outputs' order in an exported file: MediaPipe reads heads in the subgraph's order and
# the converter sorts a signature's outputs by tensor, not by name.
OUTPUTS = ("probabilities", "unknown_score")
# Field slots of the tables used (metadata_schema.fbs, in declaration order).
_MODEL = {"name": 0, "description": 1, "version": 2, "subgraphs": 3, "author": 4, "license": 5}
_MODEL_MIN_PARSER = 7
_SUBGRAPH = {"inputs": 2, "outputs": 3}
_TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "files": 6}
_CONTENT = {"type": 0, "properties": 1}
_IMAGE = {"color_space": 0, "size": 1}
_FILE = {"name": 0, "description": 1, "type": 2}


@dataclass(frozen=True)
class ModelCard:
    """What the metadata says about one exported file."""

    name: str
    description: str
    version: str
    author: str
    license: str
    labels: Sequence[str]
    image_size: int
    # The second output's: the file's unknown threshold, the rate it was set for, its k.
    unknown_threshold: float | None = None
    unknown_rate: float = 0.0
    unknown_k: int = 0


@dataclass(frozen=True)
class EmbeddedMetadata:
    """What a reader finds in a file: the card's fields and the input's normalisation."""

    name: str
    description: str
    license: str
    labels: list[str]
    mean: list[float]
    std: list[float]
    color_space: str
    image_size: tuple[int, int]
    unknown_threshold: float | None = None  # None: the file has no unknown_score output


def with_metadata(model: bytes, card: ModelCard) -> bytes:
    """``model`` with the card as TFLite metadata and its labels as an associated file."""
    from tensorflow.lite.python import schema_py_generated as schema

    obj = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    _order_outputs(obj)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(_metadata_flatbuffer(card), np.uint8)
    obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(obj.buffers) - 1
    obj.metadata = [m for m in obj.metadata or [] if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(obj.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    # Readers open the appended zip from its end; stored, not deflated, as they expect.
    with zipfile.ZipFile(packed, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(card.labels) + "\n")
    return packed.getvalue()


def _order_outputs(obj: object) -> None:
    """The subgraph's outputs in ``OUTPUTS`` order, by the signature's names for them."""
    if not obj.signatureDefs:
        return
    named = {m.name.decode(): m.tensorIndex for m in obj.signatureDefs[0].outputs}
    if set(named) == set(OUTPUTS):
        obj.subgraphs[0].outputs = np.array([named[n] for n in OUTPUTS], np.int32)


def _metadata_flatbuffer(card: ModelCard) -> bytes:
    b = flatbuffers.Builder(1024)
    strings = {k: b.CreateString(getattr(card, k)) for k in ("name", "description", "version")}
    strings |= {k: b.CreateString(getattr(card, k)) for k in ("author", "license")}
    parser = b.CreateString(PARSER_VERSION)

    image_input = _tensor(
        b,
        "image",
        f"RGB image, {card.image_size}x{card.image_size}, float32 pixels in [0, 255] (raw: "
        "mean 0, std 1); the model's preprocessing is inside",
        content=_image_content(b, card.image_size),
        process_units=[_normalization(b, mean=0.0, std=1.0)],
        stats=(255.0, 0.0),
    )
    labels_file = _associated_file(
        b, LABELS_FILE, "Class names, one a line, in the output's order", _TENSOR_AXIS_LABELS
    )
    probabilities = _tensor(
        b,
        "probability",
        f"Softmax probabilities of the {len(card.labels)} classes, summing to 1",
        content=_feature_content(b),
        stats=(1.0, 0.0),
        files=[labels_file],
    )
    heads = [probabilities]
    if card.unknown_threshold is not None:
        heads.append(
            _tensor(
                b,
                "unknown_score",
                "Photos that fit no class: cosine distance from the photo's features to the "
                f"k-th nearest training photo's (k = {card.unknown_k}). Above "
                f"{card.unknown_threshold:.6g} the photo is unknown (that threshold flags "
                f"{card.unknown_rate:.0%} of the validation photos)",
                content=_feature_content(b),
                process_units=[_score_threshold(b, card.unknown_threshold)],
                stats=(2.0, 0.0),
            )
        )
    inputs, outputs = _vector(b, [image_input]), _vector(b, heads)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH["inputs"], inputs, 0)
    b.PrependUOffsetTRelativeSlot(_SUBGRAPH["outputs"], outputs, 0)
    subgraphs = _vector(b, [b.EndObject()])

    b.StartObject(8)
    for key, slot in _MODEL.items():
        value = subgraphs if key == "subgraphs" else strings[key]
        b.PrependUOffsetTRelativeSlot(slot, value, 0)
    b.PrependUOffsetTRelativeSlot(_MODEL_MIN_PARSER, parser, 0)
    b.Finish(b.EndObject(), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(value)
    return b.EndVector()


def _tensor(
    b: flatbuffers.Builder,
    name: str,
    description: str,
    content: int,
    stats: tuple[float, float],
    process_units: list[int] | None = None,
    files: list[int] | None = None,
) -> int:
    name_at, text_at = b.CreateString(name), b.CreateString(description)
    units = _vector(b, process_units) if process_units else None
    files_at = _vector(b, files) if files else None
    maximum, minimum = _floats(b, [stats[0]]), _floats(b, [stats[1]])
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, maximum, 0)
    b.PrependUOffsetTRelativeSlot(1, minimum, 0)
    stats_at = b.EndObject()
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(_TENSOR["name"], name_at, 0)
    b.PrependUOffsetTRelativeSlot(_TENSOR["description"], text_at, 0)
    b.PrependUOffsetTRelativeSlot(_TENSOR["content"], content, 0)
    if units is not None:
        b.PrependUOffsetTRelativeSlot(_TENSOR["process_units"], units, 0)
    b.PrependUOffsetTRelativeSlot(_TENSOR["stats"], stats_at, 0)
    if files_at is not None:
        b.PrependUOffsetTRelativeSlot(_TENSOR["files"], files_at, 0)
    return b.EndObject()


def _image_content(b: flatbuffers.Builder, size: int) -> int:
    b.StartObject(2)  # ImageSize
    b.PrependUint32Slot(0, size, 0)
    b.PrependUint32Slot(1, size, 0)
    size_at = b.EndObject()
    b.StartObject(2)  # ImageProperties
    b.PrependInt8Slot(_IMAGE["color_space"], _RGB, 0)
    b.PrependUOffsetTRelativeSlot(_IMAGE["size"], size_at, 0)
    return _content(b, _IMAGE_PROPERTIES, b.EndObject())


def _feature_content(b: flatbuffers.Builder) -> int:
    b.StartObject(0)  # FeatureProperties: no fields
    return _content(b, _FEATURE_PROPERTIES, b.EndObject())


def _content(b: flatbuffers.Builder, kind: int, properties: int) -> int:
    b.StartObject(3)
    b.PrependUint8Slot(_CONTENT["type"], kind, 0)
    b.PrependUOffsetTRelativeSlot(_CONTENT["properties"], properties, 0)
    return b.EndObject()


def _normalization(b: flatbuffers.Builder, mean: float, std: float) -> int:
    means, stds = _floats(b, [mean]), _floats(b, [std])
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, means, 0)
    b.PrependUOffsetTRelativeSlot(1, stds, 0)
    return _process_unit(b, _NORMALIZATION_OPTIONS, b.EndObject())


def _score_threshold(b: flatbuffers.Builder, threshold: float) -> int:
    b.StartObject(1)  # ScoreThresholdingOptions
    b.PrependFloat32Slot(0, threshold, 0.0)
    return _process_unit(b, _SCORE_THRESHOLDING_OPTIONS, b.EndObject())


def _process_unit(b: flatbuffers.Builder, kind: int, options: int) -> int:
    b.StartObject(2)  # ProcessUnit: the options' union type, then the options
    b.PrependUint8Slot(0, kind, 0)
    b.PrependUOffsetTRelativeSlot(1, options, 0)
    return b.EndObject()


def _associated_file(b: flatbuffers.Builder, name: str, description: str, kind: int) -> int:
    name_at, text_at = b.CreateString(name), b.CreateString(description)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(_FILE["name"], name_at, 0)
    b.PrependUOffsetTRelativeSlot(_FILE["description"], text_at, 0)
    b.PrependInt8Slot(_FILE["type"], kind, 0)
    return b.EndObject()


# ----------------------------------------------------------------------------- reading


def read_metadata(model: bytes) -> EmbeddedMetadata | None:
    """The metadata of a .tflite file's bytes, read back as a runtime would (the label file
    named by the output tensor, from the appended zip); None when it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    found = [
        root.Metadata(i).Buffer()
        for i in range(root.MetadataLength())
        if root.Metadata(i).Name() == METADATA_NAME.encode()
    ]
    if not found:
        return None
    data = root.Buffers(found[0]).DataAsNumpy().tobytes()
    if not flatbuffers.util.BufferHasIdentifier(data, 0, METADATA_IDENTIFIER):
        return None
    meta = _root(data)
    subgraph = _table(meta, _MODEL["subgraphs"], vector=0)
    image, output = (
        _table(subgraph, _SUBGRAPH["inputs"], 0),
        _table(subgraph, _SUBGRAPH["outputs"], 0),
    )
    unit = _table(image, _TENSOR["process_units"], 0)
    options = _table(unit, 1)
    properties = _table(_table(image, _TENSOR["content"]), _CONTENT["properties"])
    size = _table(properties, _IMAGE["size"])
    labels = _label_file(model, output)
    color_at = _field(properties, _IMAGE["color_space"])
    color = properties.Get(flatbuffers.number_types.Int8Flags, color_at + properties.Pos)
    return EmbeddedMetadata(
        name=_string(meta, _MODEL["name"]),
        description=_string(meta, _MODEL["description"]),
        license=_string(meta, _MODEL["license"]),
        labels=labels,
        mean=_float_vector(options, 0),
        std=_float_vector(options, 1),
        color_space="RGB" if color == _RGB else str(color),
        image_size=(_uint32(size, 1), _uint32(size, 0)),
        unknown_threshold=_unknown_threshold(subgraph),
    )


def _unknown_threshold(subgraph: Table) -> float | None:
    """The second output's score threshold; None when the file has one output."""
    offset = _field(subgraph, _SUBGRAPH["outputs"])
    if subgraph.VectorLen(offset) < 2:
        return None
    options = _table(
        _table(_table(subgraph, _SUBGRAPH["outputs"], 1), _TENSOR["process_units"], 0), 1
    )
    at = _field(options, 0)
    return (
        float(options.Get(flatbuffers.number_types.Float32Flags, at + options.Pos)) if at else 0.0
    )


def _label_file(model: bytes, output: Table) -> list[str]:
    """The lines of the output's label file; [] when it names none or the zip lacks it."""
    if not _field(output, _TENSOR["files"]):
        return []
    name = _string(_table(output, _TENSOR["files"], 0), _FILE["name"])
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return archive.read(name).decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        return []


def _root(data: bytes) -> Table:
    return Table(bytearray(data), flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))


def _field(table: Table, slot: int) -> int:
    return table.Offset(4 + 2 * slot)


def _table(table: Table, slot: int, vector: int | None = None) -> Table:
    offset = _field(table, slot)
    if not offset:
        raise ValueError(f"TFLite metadata: field {slot} missing")
    at = offset + table.Pos
    if vector is not None:
        at = table.Vector(offset) + 4 * vector
    return Table(table.Bytes, table.Indirect(at))


def _string(table: Table, slot: int) -> str:
    offset = _field(table, slot)
    return table.String(offset + table.Pos).decode("utf-8") if offset else ""


def _float_vector(table: Table, slot: int) -> list[float]:
    offset = _field(table, slot)
    start, length = table.Vector(offset), table.VectorLen(offset)
    return [
        float(table.Get(flatbuffers.number_types.Float32Flags, start + 4 * i))
        for i in range(length)
    ]


def _uint32(table: Table, slot: int) -> int:
    offset = _field(table, slot)
    if not offset:
        return 0
    return int(table.Get(flatbuffers.number_types.Uint32Flags, offset + table.Pos))
