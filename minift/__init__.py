"""minift: fine-tuning BERT-style encoders from scratch in pure PyTorch.

The package is in layers, each a folder, and a lower one never imports a higher one:

- ``core/``  the textbook: the encoder, the optimizer, the loop, masking, label alignment, SetFit loss
- ``data/``  file readers, the tokenizer, batching
- ``hf/``    the Hugging Face format: safetensors and the checkpoint key map
- ``fast/``  the speed paths: unpadding, CPU kernels (entered through ``speed_up(model)``)
- ``tasks/`` one file per task: its head, its dataset and its evaluation
- ``run/``   the application: options, recipes, the CLI, search, plots

Start with ``core/model.py``. ``from minift import load_bert`` is the entry point and returns the
textbook model. ``import minift`` imports nothing else (not even torch): ``minift.BertConfig``,
``minift.BertModel`` and ``minift.load_bert`` load their module on first use.
"""

__all__ = ["BertConfig", "BertModel", "load_bert"]
__version__ = "0.1.0"

_HOME = {"BertConfig": "minift.core.model", "BertModel": "minift.core.model",
         "load_bert": "minift.hf.checkpoint"}


def __getattr__(name: str):
    """``minift.BertConfig`` and friends: imported from their module when first asked for."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'minift' has no attribute {name!r}")
