"""The WID state on disk: one writer and one reader for ``wid_config.json`` and ``wid_model.safetensors``.

A WID state is what `WIDModel.save_pretrained` writes and every `WIDTrainer` checkpoint holds::

    wid_config.json         {"wid_config": {...WIDConfig...}, "teacher": {class, widths, layers},
                             "include_inherited": bool, "wid_hf_version": "..."}
    wid_model.safetensors   compactors, masks and (by default) the inherited weights, each tensor once

`WIDConfig.save_pretrained` writes the same layout without "teacher". Files of wid_hf 0.1.0 betas that hold the
config's fields at the top level (no "wid_config" key) still load. Every problem a user can meet here (missing,
corrupt, made for another teacher, from another version) is one error, raised in one place, that says what to do.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from . import __version__

CONFIG_NAME = "wid_config.json"
WEIGHTS_NAME = "wid_model.safetensors"
_TEACHER_WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads")


def write_wid_config(directory: str | os.PathLike, config: dict, teacher: Optional[dict] = None,
                     include_inherited: Optional[bool] = None) -> str:
    """Write ``wid_config.json`` (the one writer of that file); returns its path."""
    os.makedirs(directory, exist_ok=True)
    meta = {"wid_config": config, "wid_hf_version": __version__}
    if teacher is not None:
        meta["teacher"] = teacher
    if include_inherited is not None:
        meta["include_inherited"] = include_inherited
    path = os.path.join(directory, CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def read_wid_config(path: str | os.PathLike) -> dict:
    """Read ``wid_config.json`` from a directory (or the file itself) as ``{"wid_config": {...}, "teacher": {...}}``,
    whichever layout wrote it (the one reader of that file)."""
    source = os.fspath(path)
    path = os.path.join(source, CONFIG_NAME) if os.path.isdir(source) else source
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{source!r} holds no {CONFIG_NAME}: pass a directory written by WIDModel.save_pretrained or a "
            "WIDTrainer checkpoint-N folder.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the WID checkpoint is corrupt. Use an earlier "
                         "checkpoint.") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path} does not hold a WID config; the WID checkpoint is corrupt.")
    if "wid_config" not in meta:  # the flat layout of early versions: the config's fields at the top level
        meta = {"wid_config": meta}
    meta.setdefault("teacher", {})
    return meta


def teacher_description(model, dims) -> dict:
    """What a WID state records about its teacher, to refuse a different one on load."""
    return {"class": type(model).__name__, "name_or_path": getattr(model.config, "_name_or_path", None),
            **vars(dims), "num_hidden_layers": model.config.num_hidden_layers}


def check_teacher(meta: dict, model_config, source: str) -> None:
    """Raise if the WID state in `meta` was made for a teacher of other widths or depth than `model_config`."""
    teacher = meta.get("teacher", {})
    saved = {k: teacher.get(k) for k in _TEACHER_WIDTHS}
    this = {k: int(getattr(model_config, k)) for k in _TEACHER_WIDTHS}
    if all(v is not None for v in saved.values()) and saved != this:
        raise ValueError(f"The WID checkpoint at {source!r} was made for a teacher with {saved}, but this teacher has "
                         f"{this}. Pass the teacher the checkpoint was trained from.")
    layers = teacher.get("num_hidden_layers")
    if layers is not None and layers != model_config.num_hidden_layers:
        raise ValueError(
            f"The WID checkpoint at {source!r} has {layers} layers, this teacher {model_config.num_hidden_layers}. "
            "If it was trained on a subset of layers, select the same layers first (wid_hf.baselines.select_layers).")


def save_wid_state(model, directory: str | os.PathLike, include_inherited: bool = True) -> None:
    """Write a WIDModel's config and tensors to `directory`."""
    from safetensors.torch import save_file

    write_wid_config(directory, model.wid_config.to_dict(), teacher_description(model.base_model, model.teacher_dims),
                     include_inherited)
    tensors = {k: v.cpu() for k, v in wid_state_dict(model, include_inherited).items()}
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})


def read_wid_tensors(directory: str | os.PathLike, device="cpu") -> dict:
    """The tensors of a WID state (the one reader of ``wid_model.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = os.path.join(directory, WEIGHTS_NAME)
    try:
        return load_file(weights, device=str(device))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{weights} is missing; the WID checkpoint is incomplete. Use an earlier "
                                "checkpoint.") from err
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Could not read {weights} ({err}); the file is corrupt or truncated. Use an earlier "
                         "checkpoint.") from err


def wid_state_dict(model, include_inherited: bool = True) -> dict:
    """Compactors, masks and (by default) the inherited weights of a WIDModel, each tensor once (tied ones once).
    Compactors are whole (compacted ones expanded with zeros in the pruned rows/columns), whatever the model holds."""
    state, seen = {}, set()
    whole = model.whole_compactors()
    for name, param in model.named_parameters():  # named_parameters drops tied duplicates
        if include_inherited or ".compactor" in name:
            state[name] = whole.get(name, param)
            seen.add(name)
    for name, tensor in model.state_dict().items():
        if name.startswith("masks.") or (include_inherited and name not in seen and _is_buffer(model, name)):
            state[name] = tensor
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_wid_state_dict(model, tensors: dict, source: str = "the checkpoint") -> None:
    """Load tensors written by `save_wid_state` into a WIDModel, refusing any that do not match it."""
    expected = wid_state_dict(model, include_inherited=True)
    required = {k for k in expected if ".compactor" in k or k.startswith("masks.")}
    missing = sorted(required - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Was it saved from a different "
            "teacher or wid_hf version?")
    for key, value in tensors.items():
        if expected[key].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, this model expects {tuple(expected[key].shape)}.")
    model.expand_compactors()  # the tensors are whole compactors
    model.load_state_dict(tensors, strict=False)
    model._compact_if_enabled()  # hard masks loaded: back to kept slices (the optimizer is made or fitted after this)


def resolve_directory(path: str | os.PathLike, **hub_kwargs) -> str:
    """A local WID state directory, or a Hub repo id downloaded with huggingface_hub (`hub_kwargs`: revision,
    token, ...)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path!r} is a file; pass the directory written by WIDModel.save_pretrained.")
    if path.count("/") > 1 or path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"No WID checkpoint directory at {path!r}.")
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=path, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs)


def _is_buffer(module, name: str) -> bool:
    prefix, _, leaf = name.rpartition(".")
    owner = module.get_submodule(prefix) if prefix else module
    return leaf in owner._buffers
