"""A run's final save (a classifier and its tokenizer, the files a finished ``minift finetune``
leaves, written with ``write_safetensors`` through ``atomic_write``) under a disk that fills at
seeded points: every file is the old one or the new one, and the folder loads.

The safetensors format itself is tested in test_checkpoint.py (against the reference library);
``atomic_write`` alone in test_files.py.
"""

import errno
import os
import random

import pytest
import torch

import minift.core.files as files_module
from minift.core.model import BertConfig
from minift.data.tokenizer import Tokenizer
from minift.tasks.classify import SequenceClassifier


class _FillingDisk:
    """``minift.hf.safetensors``' ``os``, whose files accept ``budget`` bytes in all, then ENOSPC."""

    def __init__(self, budget: float):
        self.budget, self.used = budget, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        disk, f = self, os.fdopen(fd, *args, **kwargs)

        class Limited:
            def write(self, data):
                room = disk.budget - disk.used
                if len(data) > room:
                    f.write(data[: int(max(room, 0))])
                    disk.used = disk.budget
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.used += len(data)
                return f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def __getattr__(self, name):
                return getattr(f, name)

        return Limited()


def test_a_full_disk_during_the_final_save_leaves_a_folder_that_loads(tmp_path, minilm_dir,
                                                                      monkeypatch):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    torch.manual_seed(0)
    old, new = SequenceClassifier(config, 2), SequenceClassifier(config, 2)

    def save(model, folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    reference = tmp_path / "reference"
    save(new, reference)
    files = {p.name: p.read_bytes() for p in reference.iterdir()}
    total = sum(len(data) for data in files.values())
    rng = random.Random(5)
    budgets = [0, *sorted(rng.randrange(1, total) for _ in range(11))]
    for i, budget in enumerate(budgets):
        folder = tmp_path / f"run{i}"
        save(old, folder)
        previous = {p.name: p.read_bytes() for p in folder.iterdir()}
        with monkeypatch.context() as patch:
            patch.setattr(files_module, "os", _FillingDisk(budget))
            with pytest.raises(OSError) as error:
                save(new, folder)
        assert error.value.errno == errno.ENOSPC
        now = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert set(now) == set(previous), f"budget {budget}: {sorted(now)}"  # no temporary file
        for name, data in now.items():  # each file whole: the old one or the new one
            assert data in (previous[name], files[name]), f"budget {budget}: {name} is partial"
        SequenceClassifier.from_pretrained(folder)  # the folder loads
        Tokenizer.from_pretrained(folder)
