"""Model names users can give: `tiny` (the small model potwatch trains and ships), demo models by name,
or any checkpoint of a supported family (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM2) by hub id or local folder, loaded with `from_pretrained`
(offline works from the local cache). The family comes from the config's `model_type`."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from potwatch.errors import ModelLoadError
from potwatch.models.adapter import ModelAdapter
from potwatch.models.demo_models import DEMO_MARK, DEMO_SPECS, build_demo
from potwatch.models.family import family_for, supported_types
from potwatch.models.family_processors import (  # noqa: F401 - the frame sizes, re-exported
    DEFAULT_FRAME_MAX_PIXELS,
    QWEN3_FRAME_MAX_PIXELS,
    read_processor_settings,
)
from potwatch.models.tiny_build import TINY_MARK

TINY_NAME = "tiny"  # the trained model shipped as package data (assets/tiny)

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, checked to exist here; the default (CUDA if there is one) for None."""
    if device is None or device == "":
        return default_device()
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"Unknown device '{device}'; use cpu, cuda or cuda:N.") from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(
                f"Device '{device}' is not available: torch finds no CUDA GPU here; use --device cpu."
            )
        if target.index is not None and target.index >= count:
            raise ModelLoadError(
                f"There is no device '{device}': this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}."
            )
    elif target.type != "cpu":
        backend = getattr(torch, target.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ModelLoadError(f"Device '{device}' is not available here; use cpu or cuda.")
    return target


DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}


def device_has_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes in bfloat16 natively: GPUs of compute capability 8.0 on (Ampere,
    Jetson Orin) and ROCm do; older ones (Volta, Turing, Jetson Xavier) only emulate it, slowly."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, model_dtype: torch.dtype | None,
                  bf16_supported: bool | None = None) -> torch.dtype:
    """The user's dtype; else the model's own on CUDA (float16 in place of a bfloat16 the GPU lacks) and
    float32 on the CPU (faster there than bf16). Asking for bfloat16 on a GPU without it is an error,
    not a silent float16: float16 can overflow where bfloat16 does not, so the user should choose.

    `bf16_supported`: whether the CUDA device has native bfloat16 (`device_has_bf16` asks it when None)."""
    if isinstance(dtype, str):
        if dtype and dtype not in DTYPE_NAMES:
            raise ModelLoadError(f"Unknown dtype '{dtype}'; use one of float32, bfloat16, float16.")
        dtype = DTYPE_NAMES.get(dtype)
    on_cuda = device.type == "cuda"
    if dtype is None and (not on_cuda or model_dtype is None):
        return torch.float32
    wanted = dtype or model_dtype
    if wanted != torch.bfloat16 or not on_cuda:
        return wanted
    if device_has_bf16(device) if bf16_supported is None else bf16_supported:
        return wanted
    if dtype is None:
        log.info("%s has no native bfloat16: this bfloat16 model runs in float16", device)
        return torch.float16
    raise ModelLoadError(
        f"Device {device} has no native bfloat16 (it needs a GPU of compute capability 8.0 or later); "
        "use --dtype float16 or --dtype float32."
    )


def _adapter_for(model, tokenizer, settings: dict, name: str, is_demo: bool,
                 frame_max_pixels: int | None) -> ModelAdapter:
    """The family's adapter around a loaded model, with its frame processor built from `settings`, prompted
    through the processor's chat template, else the tokenizer's, else the family's built-in format."""
    family = family_for(model.config.model_type)
    processor = family.frame_processor(settings, model.config, frame_max_pixels, is_demo)
    chat_template = settings.get("chat_template")  # None: the tokenizer's own, if it has one
    return family.adapter(model, tokenizer, processor, name, is_demo, chat_template=chat_template)


def _read_preprocessor_config(source: str) -> dict:
    """The checkpoint's processor settings and chat template (see `read_processor_settings`)."""
    return read_processor_settings(source)


def tiny_folder() -> Path:
    """Where the trained `tiny` checkpoint lies: package data, so a checkout and an installed wheel
    both find it, from any working folder."""
    from potwatch.assets import tiny_folder as packaged_tiny

    return packaged_tiny()


def load_model(name: str = TINY_NAME, dtype: str | torch.dtype | None = None, device: str | None = None,
               frame_max_pixels: int | None = None, trust_remote_code: bool = False) -> ModelAdapter:
    """An adapter for `name`: `tiny` (the trained model potwatch ships), a demo name (see
    `demo_names()`), a hub id or a local folder.

    `frame_max_pixels` bounds Qwen's per-frame resolution; the other families have a fixed frame size."""
    target = resolve_device(device)
    if name in DEMO_SPECS:
        model, tokenizer = build_demo(name)
        model = model.to(target, resolve_dtype(dtype, target, None))
        return _adapter_for(model, tokenizer, {}, name, True, frame_max_pixels)
    if name == TINY_NAME and not Path(name).exists():
        folder = tiny_folder()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"The trained tiny model is missing from this install ({folder}); reinstall potwatch, or train it "
                "with training/train_tiny.py."
            )
        return _load_pretrained(str(folder), dtype, target, frame_max_pixels, trust_remote_code, label_name=TINY_NAME)
    return _load_pretrained(name, dtype, target, frame_max_pixels, trust_remote_code)


def _load_pretrained(name, dtype, target, frame_max_pixels, trust_remote_code, label_name: str | None = None) -> ModelAdapter:
    from transformers import AutoConfig, AutoTokenizer

    local = _check_local_folder(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - turned into one clear sentence
        if local:
            raise ModelLoadError(
                f"'{name}' has a config.json that is not a model config ({_first_sentence(error)}); "
                "copy the model folder again or save it with save_pretrained."
            ) from None
        raise ModelLoadError(
            f"Cannot load model '{name}': it is not a demo name ({', '.join(DEMO_SPECS)}), a local model folder, "
            "or a hub id that can be downloaded or is in the local cache; check the name or download the model first."
        ) from None
    family = family_for(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"Model '{name}' is a '{config.model_type}' model; potwatch supports {', '.join(supported_types())} for now."
        )
    if local and not _has_weights(Path(name)):
        raise ModelLoadError(
            f"'{name}' has a config.json but no weights (model.safetensors or pytorch_model.bin); "
            "copy the whole model folder."
        )
    model_class = family.load_model_class()
    model_dtype = getattr(config.text_config, "dtype", None) or getattr(config, "dtype", None)
    if isinstance(model_dtype, str):
        model_dtype = getattr(torch, model_dtype, None)
    chosen = resolve_dtype(dtype, target, model_dtype)
    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("Loading a checkpoint needs the accelerate package; run .venv/bin/pip install accelerate "
                             "(bash setup.sh installs it).")
    try:
        # Each tensor goes from the memory-mapped file to the device, converted on the way: no whole copy of
        # the model is ever made in host memory, which a Jetson's GPU shares (device_map needs accelerate).
        model = model_class.from_pretrained(name, dtype=chosen, device_map={"": target},
                                            trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"Cannot load the weights or tokenizer of '{name}' ({error}); check the folder is complete.") from None
    model.eval()
    is_demo = bool(getattr(config, DEMO_MARK, None))
    log.info("loaded %s (%s) on %s as %s", name, config.model_type, target, chosen)
    adapter = _adapter_for(model, tokenizer, _read_preprocessor_config(name), label_name or name, is_demo,
                           frame_max_pixels)
    adapter.label = getattr(config, TINY_MARK, None)  # what a potwatch-trained model knows, said beside it
    return adapter


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")


def _looks_like_path(name: str) -> bool:
    """A name no hub id could be: absolute, relative with ./ or ../, home-relative, or ending in a slash."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith(("/", os.sep)) or name.count("/") > 1


def _check_local_folder(name: str) -> bool:
    """True when `name` is a local model folder; a ModelLoadError when it is a path but not a model folder."""
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_path(name):
            raise ModelLoadError(f"The model folder '{name}' does not exist; check the path.")
        return False
    if not path.is_dir():
        raise ModelLoadError(
            f"'{name}' is a file, not a model folder; give the folder that holds its config.json, a hub id, "
            "or a demo name such as demo."
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"'{name}' is a folder but not a model (it has no config.json); give a folder written by "
            "save_pretrained, a hub id, or a demo name such as demo."
        )
    return True


def _has_weights(folder: Path) -> bool:
    return any((folder / file).is_file() for file in _WEIGHT_FILES) or any(folder.glob("*.safetensors"))


def _first_sentence(error: Exception) -> str:
    """The first sentence of a library's error, without its trailing full stop."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")


def save_demo(name: str, folder: str | Path) -> Path:
    """Write a demo model as a normal checkpoint folder (config, weights, tokenizer, preprocessor config)."""
    if name not in DEMO_SPECS:
        raise ModelLoadError(f"Unknown demo model '{name}'; pick one of: {', '.join(DEMO_SPECS)}.")
    folder = Path(folder)
    model, tokenizer = build_demo(name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    adapter = _adapter_for(model, tokenizer, {}, name, True, None)
    settings = adapter.description.saved_settings(adapter.processor)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))
    return folder


def demo_names() -> list[str]:
    return list(DEMO_SPECS)
