"""What the search's tests share (test_search, test_trials): the finetune files and options a
search runs on with the ``tiny`` model, and ways to compare and watch its runs."""

import os

from test_cli import SENTENCES, write_tsv

import minift.data.readers


def search_files(folder) -> dict[str, str]:
    """train (the sentences twice), dev and test TSV files in ``folder``."""
    return {"train": str(write_tsv(folder / "train.tsv", SENTENCES * 2)),
            "dev": str(write_tsv(folder / "dev.tsv", SENTENCES)),
            "test": str(write_tsv(folder / "test.tsv", SENTENCES[:4]))}


def options(tiny, files, **more):
    """A finetune command's options: the tiny model, tiny files, short inputs."""
    return {"model": str(tiny), "train": files["train"], "dev": files["dev"], "max_length": 16,
            "batch_size": 6, "epochs": 1, "device": "cpu"} | more


def without_time(value):
    """``search.json`` without what the clock decides (seconds)."""
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_time(v) for v in value]
    return value


def count_reads(monkeypatch, path: str) -> list:
    """Every read of ``path`` through ``minift.data.readers`` (every text reader, and
    ``read_utf8_text`` wherever it is imported, reads the bytes with ``read_file_bytes``)."""
    reads = []
    real_read = minift.data.readers.read_file_bytes

    def counting_read(file, *args, **kwargs):
        if os.path.abspath(file) == os.path.abspath(path):
            reads.append(file)
        return real_read(file, *args, **kwargs)

    monkeypatch.setattr(minift.data.readers, "read_file_bytes", counting_read)
    return reads

