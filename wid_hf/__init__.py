"""wid_hf: Weight-Inherited Distillation (WID) for Hugging Face BERT models.

    >>> from wid_hf import WIDConfig, get_wid_model
    >>> config = WIDConfig.from_preset("wid55")

The public names below are imported on first use, so `wid-hf --help` and `import wid_hf.config` do not pay for
torch and transformers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "WIDConfig": "config",
    "WIDModel": "model",
    "get_wid_model": "model",
    "WIDTrainer": "trainer",
    "WIDTrainingArguments": "trainer",
    "WIDCallback": "trainer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wid_hf' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
