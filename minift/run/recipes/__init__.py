"""The recipes: fine-tune a classifier, fine-tune a tagger (NER / POS), continue MLM pretraining,
few-shot SetFit, extractive question answering (SQuAD). What the ``minift`` commands run, and what
lessons and benchmarks call: ``recipes.finetune(task="sst2", epochs=1, out=...)``.

Each recipe takes its options as keywords, the fields of its dataclass in
``minift.run.options`` (``FinetuneOptions`` ...), which checks them when it is made. Read in
this order:

1. ``prepare``: the checks that need the model or the files (device, lengths, freeze depth),
   the data folder, the output folder and its lock, the shared data helpers;
2. ``skeleton``: ``Recipe`` and ``run_recipe``, what the recipes on ``minift.core.loop.train``
   share: load the model, score it before, train, take the best weights, score them, save;
3. the recipes, one file each: ``classify`` (``finetune``), ``tag`` (``ner``), ``mlm``
   (``pretrain``), ``fewshot`` (``setfit``, which trains once per seed) and ``squad`` (``qa``,
   ``answer``). Each holds its checks, its data, its model, its one evaluation (the same for
   dev and test) and its metrics; ``read_test`` / ``score_saved`` score a saved model on a test
   file, as ``minift.run.search`` does once it has chosen.

**Everything is checked before a model is loaded**: numbers, files, columns, labels, the device,
the output folder. A bad value raises ``ValueError`` (the command prints it as one line).

**The output folder** (``out``) of a finished run holds the model with the best held-out score
(HF format: ``config.json``, ``model.safetensors``, the tokenizer files), ``metrics.json`` and
``log.jsonl`` (the training log, one JSON record a line); ``ner`` adds
``{dev,test}_predictions.txt``, ``qa`` adds ``predictions.json`` (question id -> answer text),
``setfit`` writes ``metrics.json`` and the seed-0 model in ``out/model``. While a run is
unfinished the folder also holds ``resume.pt`` (what ``resume`` continues from) and ``best/``
(the best model so far). When the run ends, the files of ``best/`` become the model in ``out``
(moved, not copied: the folder never holds the model twice) and ``resume.pt`` is removed, unless
``keep_resume``. ``.minift.lock`` marks the one run writing into the folder
(``minift.core.files``).
"""

from minift.run.recipes.classify import finetune
from minift.run.recipes.fewshot import setfit
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
from minift.run.recipes.skeleton import Outcome, Recipe, run_recipe
from minift.run.recipes.squad import answer, qa
from minift.run.recipes.tag import ner

__all__ = ["Outcome", "Recipe", "_epoch_batches", "answer", "check_device", "check_freeze",
           "check_max_length", "claim_folder", "data_folder", "finetune", "ner", "pretrain", "qa",
           "read_labelled", "run_recipe", "setfit"]
