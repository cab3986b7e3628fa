"""The recipes: what the ``minift`` commands run, and what lessons and benchmarks call
(``recipes.finetune(task="sst2", epochs=1, out=...)``). Each takes its options as keywords, the
fields of its dataclass in ``minift.run.options`` (``FinetuneOptions`` ...), which checks them
when it is made. Read ``prepare`` (the checks that need the model or the files, the data and
output folders), ``skeleton`` (``run_recipe``: load, score before, train, take the best weights,
score them, save), then one file a recipe: ``classify`` (``finetune``), ``tag`` (``ner``: NER /
POS), ``mlm`` (``pretrain``), ``fewshot`` (``setfit``, which trains once per seed), ``squad``
(``qa``, and ``answer``), ``seq2seq`` (BERT2BERT, and ``generate``, which writes text with a
trained model) and ``lm`` (causal language modelling); all but ``mlm`` also score a saved model
on a test file (``read_test``, ``score_saved``), as ``minift.run.search`` does once it has chosen.

**Everything is checked before a model is loaded**: numbers, files, columns, labels, the device,
the output folder. A bad value raises ``ValueError`` (the command prints it as one line).

**The output folder** (``out``) of a finished run holds the model with the best held-out score
(HF format), its tokenizer, ``metrics.json`` and ``log.jsonl`` (the training log); ``ner`` adds
``{dev,test}_predictions.txt``, ``seq2seq`` ``dev_predictions.txt``, ``qa`` ``predictions.json``;
``setfit`` writes ``metrics.json`` and the seed-0 model in ``out/model``. ``.minift-run.json``
records the command, its options and the data files' hashes (``prepare.run_record``), which a
resume must find unchanged. An unfinished run also leaves ``resume.pt`` and ``best/`` (the best
model so far), removed at its end (``prepare.finish_run``); ``.minift.lock`` marks the one run
writing there. ``out`` is never the model folder, nor, unless ``overwrite``, a folder holding
files no run writes or another command's run (``prepare.check_out``).
"""

from minift.run.recipes.classify import finetune
from minift.run.recipes.fewshot import setfit
from minift.run.recipes.lm import lm
from minift.run.recipes.mlm import pretrain
from minift.run.recipes.prepare import (
    check_device,
    check_freeze,
    check_max_length,
    claim_folder,
    data_folder,
    read_labelled,
)
from minift.run.recipes.prepare import epoch_batches as _epoch_batches
from minift.run.recipes.seq2seq import generate, seq2seq
from minift.run.recipes.skeleton import Outcome, Recipe, run_recipe
from minift.run.recipes.squad import answer, qa
from minift.run.recipes.tag import ner

__all__ = ["Outcome", "Recipe", "_epoch_batches", "answer", "check_device", "check_freeze",
           "check_max_length", "claim_folder", "data_folder", "finetune", "generate", "lm", "ner",
           "pretrain", "qa", "read_labelled", "run_recipe", "seq2seq", "setfit"]
