"""minift: fine-tuning BERT-style encoders from scratch in pure PyTorch.

The package is in layers, each a folder, and a lower one never imports a higher one:

- ``core/``  the textbook: the encoder, the optimizer, the loop, masking, label alignment, SetFit loss
- ``data/``  file readers, the tokenizer, batching
- ``hf/``    the Hugging Face format: safetensors and the checkpoint key map
- ``fast/``  the speed paths: unpadding, CPU kernels (entered through ``speed_up(model)``)
- ``tasks/`` one file per task: its head, its dataset and its evaluation
- ``run/``   the application: options, recipes, the CLI, search, plots

Start with ``core/model.py``. The front door is the few names a user needs, each taking
``"minilm"`` (the installed all-MiniLM-L6-v2) or a checkpoint folder:

- ``load_bert(model)`` -> the textbook ``BertModel``; ``save_bert(model, folder)`` writes HF's format
- ``Tokenizer.from_pretrained(model)`` -> texts to padded tensors
- ``encode(texts, model)`` -> sentence embeddings (mean pooling, unit length)
- the recipes the commands run: ``finetune``, ``ner``, ``pretrain``, ``setfit``, ``qa``
  (keywords: the options of ``minift <command> --help``, ``model="minilm"`` by default)

``import minift`` imports nothing else (not even torch): each name loads its module on first use.
"""

import os

__all__ = ["BertConfig", "BertModel", "Tokenizer", "encode", "finetune", "load_bert", "ner",
           "pretrain", "qa", "save_bert", "setfit"]
__version__ = "0.1.0"

_HOME = {"BertConfig": "minift.core.model", "BertModel": "minift.core.model",
         "load_bert": "minift.hf.checkpoint", "save_bert": "minift.hf.checkpoint",
         "Tokenizer": "minift.data.tokenizer",
         **dict.fromkeys(("finetune", "ner", "pretrain", "setfit", "qa"), "minift.run.recipes")}


def __getattr__(name: str):
    """``minift.load_bert`` and friends: imported from their module when first asked for."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'minift' has no attribute {name!r}")


def encode(texts, model="minilm", tokenizer=None, **options):
    """Sentence embeddings of ``texts``: a (len(texts), hidden) tensor, each row of length 1.

    ``model`` is ``"minilm"``, a checkpoint folder (its tokenizer is read from the same place) or
    a loaded ``BertModel`` (then give ``tokenizer``: a ``Tokenizer``, ``"minilm"`` or a folder).
    ``options`` (``batch_size``, ``max_length``, ``normalize``) go to
    ``minift.core.sentence.encode``, which does the work: mean pooling, as sentence-transformers.
    """
    from minift.core.sentence import encode as encode_loaded
    from minift.data.tokenizer import Tokenizer
    from minift.hf.checkpoint import load_bert

    if isinstance(texts, str):
        raise ValueError("encode takes a list of texts, not one string: encode([text])")
    if tokenizer is None:
        if not isinstance(model, (str, os.PathLike)):
            raise ValueError("encode: with a loaded model, give its tokenizer "
                             "(tokenizer=Tokenizer, 'minilm' or a folder)")
        tokenizer = model
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if isinstance(model, (str, os.PathLike)):
        model = load_bert(model)
    return encode_loaded(model, tokenizer, list(texts), **options)
