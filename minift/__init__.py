"""minift: fine-tuning BERT-style encoders from scratch in pure PyTorch.

Each file holds one concept; start with ``model.py``. ``import minift`` imports nothing else (not
even torch): ``minift.BertConfig`` and ``minift.BertModel`` load ``minift.model`` on first use.
"""

__all__ = ["BertConfig", "BertModel"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``minift.BertConfig`` / ``minift.BertModel``: imported from ``minift.model`` when asked."""
    if name in __all__:
        from minift import model

        return getattr(model, name)
    raise AttributeError(f"module 'minift' has no attribute {name!r}")
