"""The recipes: what the ``minift`` commands run, and what lessons and benchmarks call
(``recipes.finetune(task="sst2", epochs=1, out=...)``). Each takes the fields of its options
dataclass (``minift.run.options``) as keywords, and checks everything (numbers, files, columns,
labels, the device, the output folder) before a model is loaded.

Read ``prepare`` (the checks, the data and output folders), ``skeleton`` (``run_recipe``: load,
score before, train, take the best weights, score them, save), then one file a recipe:
``classify`` (finetune), ``tag`` (ner), ``mlm`` (pretrain), ``fewshot`` (setfit), ``squad`` (qa,
answer), ``seq2seq`` (seq2seq, generate), ``lm``. All but ``mlm`` also score a saved model on a
test file (``read_test``, ``score_saved``), as ``minift.run.search`` does once it has chosen.

**The output folder** of a finished run holds the best model (HF format), its tokenizer,
``metrics.json`` and ``log.jsonl``; ``.minift-run.json`` records the command, its options and the
data files' hashes, which a resume must find unchanged. An unfinished run also leaves
``resume.pt`` and ``best/`` (``prepare.finish_run`` removes them); ``.minift.lock`` marks the one
run writing there.
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
