"""minift: fine-tuning BERT-style encoders from scratch in pure PyTorch.

Each file holds one concept; start with ``model.py``. Nothing is imported here eagerly beyond the
encoder, so ``import minift`` stays cheap.
"""

from minift.model import BertConfig, BertModel

__all__ = ["BertConfig", "BertModel"]
__version__ = "0.1.0"
