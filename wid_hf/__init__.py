"""wid_hf: Weight-Inherited Distillation (WID) for Hugging Face BERT models.

    >>> from wid_hf import WIDConfig, get_wid_model
    >>> config = WIDConfig.from_preset("wid55")
"""

__version__ = "0.1.0"

from .config import WIDConfig  # noqa: E402
from .model import WIDModel, get_wid_model  # noqa: E402
from .trainer import WIDCallback, WIDTrainer, WIDTrainingArguments  # noqa: E402

__all__ = ["WIDConfig", "WIDModel", "get_wid_model", "WIDTrainer", "WIDTrainingArguments", "WIDCallback", "__version__"]
