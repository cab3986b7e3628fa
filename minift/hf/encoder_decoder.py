"""Decoders in HF format: ``BertLMHeadModel`` and ``EncoderDecoderModel`` folders, and warm
starting an encoder-decoder from one published encoder checkpoint (Rothe, Narayan and Severyn,
TACL 2020).

A decoder's key map is the encoder's (``checkpoint.KEY_MAP``) under ``bert.``, plus the
cross-attention sub-layer and the LM head (``cls.predictions``). The head's output matrix is the
word embedding and its output bias is ``cls.predictions.bias``: transformers ties both and does
not store them, and neither does minift. Weights are read by ``checkpoint.read_state_dict``: no
pickled code runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minift.core.decoder import CausalLM, EncoderDecoder
from minift.core.model import BertConfig, ConfigError
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import (
    KEY_MAP,
    Checkpoint,
    CheckpointError,
    check_fits_in_memory,
    copy_weights,
    load_encoder_weights,
    read_checkpoint,
    read_config_json,
    read_state_dict,
    rename,
    rename_tables,
    resolve_model_dir,
    split_hf_state_dict,
    to_hf_state_dict,
    write_hf_folder,
)

# --- 1. The key map of a decoder: HF BertLMHeadModel names -> minift CausalLM names ---------------

CROSS_ATTENTION_KEYS: dict[str, str] = {
    f"bert.encoder.layer.{{}}.crossattention.{hf}.{kind}": f"bert.layers.{{}}.{ours}.{kind}"
    for hf, ours in (("self.query", "cross_attention.query"), ("self.key", "cross_attention.key"),
                     ("self.value", "cross_attention.value"),
                     ("output.dense", "cross_attention.out"),
                     ("output.LayerNorm", "cross_attention_norm"))
    for kind in ("weight", "bias")
}
LM_HEAD_KEYS: dict[str, str] = {
    "cls.predictions.transform.dense.weight": "head.transform.weight",
    "cls.predictions.transform.dense.bias": "head.transform.bias",
    "cls.predictions.transform.LayerNorm.weight": "head.transform_norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "head.transform_norm.bias",
    "cls.predictions.bias": "head.bias",
}
DECODER_KEY_MAP: dict[str, str] = {
    **{f"bert.{hf}": f"bert.{ours}" for hf, ours in KEY_MAP.items()
       if not hf.startswith("pooler.")},  # a decoder has no pooler
    **CROSS_ATTENTION_KEYS,
    **LM_HEAD_KEYS,
}
# Tied copies: not stored by either library; where a file holds one, it must equal its twin.
TIED_KEYS = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED_DECODER_KEYS = {"bert.embeddings.position_ids"}
_FROM_HF, _TO_HF = rename_tables(DECODER_KEY_MAP)


def decoder_from_hf(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A ``BertLMHeadModel`` state dict -> ``CausalLM`` names; unknown keys and tied copies that
    differ from their twin are errors, by name."""
    for name, twin in TIED_KEYS.items():
        if name in state_dict and twin in state_dict and not torch.equal(state_dict[name],
                                                                          state_dict[twin]):
            raise CheckpointError(f"{source}: {name} differs from {twin}; minift always ties "
                                  "the LM head to it")
    kept = {k: v for k, v in state_dict.items()
            if k not in TIED_KEYS and k not in IGNORED_DECODER_KEYS}
    renamed = {name: rename(name, _FROM_HF) for name in kept}
    unknown = [name for name, target in renamed.items() if target is None]
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys: {', '.join(unknown)}")
    return {renamed[name]: tensor for name, tensor in kept.items()}


def decoder_to_hf(state_dict: dict[str, torch.Tensor],
                  prefix: str = "") -> dict[str, torch.Tensor]:
    """A ``CausalLM``'s tensors (its state dict, or its gradients by name) under
    ``BertLMHeadModel`` names (with ``prefix``), without the tied output matrix
    (``head.decoder.weight`` is the word embedding)."""
    untied = {k: v for k, v in state_dict.items() if k != "head.decoder.weight"}
    return to_hf_state_dict(untied, prefix, table=_TO_HF)


def load_decoder_weights(model: CausalLM, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` (``CausalLM`` names, the tied output matrix left out) into ``model``;
    what does not fit is an error (``checkpoint.copy_weights``)."""
    expected = {k: v for k, v in model.state_dict().items() if k != "head.decoder.weight"}
    copy_weights(expected, weights, source)


# --- 2. Configs -----------------------------------------------------------------------------------


def decoder_config(raw: dict, source: str, *, cross_attention: bool) -> BertConfig:
    """A decoder's ``config.json`` dict -> ``BertConfig``: ``is_decoder`` must be true,
    ``add_cross_attention`` must be ``cross_attention``, and the head tied to the embeddings."""
    if raw.get("is_decoder") is not True:
        raise ConfigError(f"{source}: is_decoder is {raw.get('is_decoder')!r}, expected true (a "
                          "decoder's self-attention is causal)")
    if bool(raw.get("add_cross_attention")) != cross_attention:
        raise ConfigError(f"{source}: add_cross_attention is {raw.get('add_cross_attention')!r}, "
                          f"expected {str(cross_attention).lower()}")
    if raw.get("tie_word_embeddings", True) is not True:
        raise ConfigError(f"{source}: tie_word_embeddings is false; minift's LM head always ties "
                          "its output matrix to the word embeddings")
    config = BertConfig.from_dict({k: v for k, v in raw.items()
                                   if k not in ("is_decoder", "add_cross_attention")}, source)
    check_fits_in_memory(config, source)
    return config


def causal_lm_config_dict(config: BertConfig, *, cross_attention: bool) -> dict:
    """``config.json`` of a ``BertLMHeadModel`` decoder, loadable by ``transformers.BertConfig``."""
    return config.to_dict() | {"architectures": ["BertLMHeadModel"], "is_decoder": True,
                               "add_cross_attention": cross_attention,
                               "tie_word_embeddings": True}


def _token_id(raw: dict, key: str, source: str, required: bool) -> int | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be an integer token id, got {value!r}")
    return value


# --- 3. Folders -----------------------------------------------------------------------------------


def load_causal_lm(path: str | os.PathLike) -> CausalLM:
    """A ``BertLMHeadModel(is_decoder=True)`` folder -> ``CausalLM`` (with cross-attention when
    its config says ``add_cross_attention``), in eval mode."""
    folder = resolve_model_dir(path)
    source, raw = str(folder / "config.json"), read_config_json(folder)
    cross = bool(raw.get("add_cross_attention"))
    config = decoder_config(raw, source, cross_attention=cross)
    state, source = read_state_dict(folder)
    model = CausalLM(config, cross_attention=cross)
    load_decoder_weights(model, decoder_from_hf(state, source), source)
    return model.eval()


def save_causal_lm(model: CausalLM, path: str | os.PathLike) -> None:
    """Write a ``CausalLM`` as transformers' ``BertLMHeadModel`` folder (config.json and
    model.safetensors)."""
    write_hf_folder(path, decoder_to_hf(model.state_dict()),
                    causal_lm_config_dict(model.config, cross_attention=model.bert.cross_attention))


def save_encoder_decoder(model: EncoderDecoder, path: str | os.PathLike) -> None:
    """Write an ``EncoderDecoder`` as transformers' ``EncoderDecoderModel`` folder: one
    config.json with ``encoder`` and ``decoder`` sub-configs and the token ids, and the weights
    under ``encoder.*`` (``BertModel`` names) and ``decoder.*`` (``BertLMHeadModel`` names)."""
    tensors = to_hf_state_dict(model.encoder.state_dict(), prefix="encoder.")
    tensors |= decoder_to_hf(model.decoder.state_dict(), prefix="decoder.")
    encoder = model.encoder.config.to_dict() | {"is_decoder": False, "add_cross_attention": False}
    config = {
        "architectures": ["EncoderDecoderModel"],
        "model_type": "encoder-decoder",
        "is_encoder_decoder": True,
        "encoder": encoder,
        "decoder": causal_lm_config_dict(model.decoder.config, cross_attention=True),
        "decoder_start_token_id": model.decoder_start_token_id,
        "pad_token_id": model.pad_token_id,
        "eos_token_id": model.eos_token_id,
    }
    write_hf_folder(path, tensors, config)


def load_encoder_decoder(path: str | os.PathLike) -> EncoderDecoder:
    """An ``EncoderDecoderModel`` folder with a BERT encoder and decoder -> ``EncoderDecoder``,
    in eval mode. An encoder saved without its pooler gets a fresh one (it is not used)."""
    folder = resolve_model_dir(path)
    source = str(folder / "config.json")
    raw = read_config_json(folder)
    if raw.get("model_type") != "encoder-decoder":
        raise ConfigError(f"{source}: model_type is {raw.get('model_type')!r}, expected "
                          "'encoder-decoder' (a folder saved by save_encoder_decoder or "
                          "transformers' EncoderDecoderModel)")
    for part in ("encoder", "decoder"):
        if not isinstance(raw.get(part), dict):
            raise ConfigError(f"{source}: expected an {part!r} sub-config (a JSON object)")
    encoder_config = BertConfig.from_dict(raw["encoder"], f"{source} (encoder)")
    check_fits_in_memory(encoder_config, f"{source} (encoder)")
    model = EncoderDecoder(
        encoder_config,
        decoder_config(raw["decoder"], f"{source} (decoder)", cross_attention=True),
        decoder_start_token_id=_token_id(raw, "decoder_start_token_id", source, True),
        pad_token_id=_token_id(raw, "pad_token_id", source, True),
        eos_token_id=_token_id(raw, "eos_token_id", source, False),
    )
    state, weights = read_state_dict(folder)
    parts = {prefix: {name[8:]: tensor for name, tensor in state.items() if name[:8] == prefix}
             for prefix in ("encoder.", "decoder.")}
    unknown = [name for name in state if name[:8] not in parts]
    if unknown:
        raise CheckpointError(f"{weights}: keys neither under encoder. nor decoder.: "
                              f"{', '.join(unknown)}")
    encoder, heads, unknown = split_hf_state_dict(parts["encoder."])
    if heads or unknown:
        raise CheckpointError(f"{weights}: unexpected encoder keys: "
                              f"{', '.join('encoder.' + k for k in [*heads, *unknown])}")
    load_encoder_weights(model.encoder,
                         Checkpoint(folder, raw["encoder"], encoder_config, encoder, {}, weights),
                         init_missing_pooler=True)
    load_decoder_weights(model.decoder, decoder_from_hf(parts["decoder."], weights), weights)
    return model.eval()


# --- 4. Warm starting -----------------------------------------------------------------------------


def _tokenizer_ids(folder: Path) -> tuple[int, int]:
    """([CLS], [SEP]) ids of the folder's tokenizer: BERT2BERT's start and end of a target."""
    tokenizer = Tokenizer.from_pretrained(folder)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise CheckpointError(f"{folder}: the tokenizer has no [CLS] or [SEP] token; give "
                              "decoder_start_token_id and eos_token_id")
    return tokenizer.cls_token_id, tokenizer.sep_token_id


def warm_start(path: str | os.PathLike = "minilm", *, seed: int = 0,
               decoder_start_token_id: int | None = None,
               eos_token_id: int | None = None) -> EncoderDecoder:
    """An ``EncoderDecoder`` whose encoder and decoder both start from one BERT checkpoint (a
    folder or ``"minilm"``), as ``EncoderDecoderModel.from_encoder_decoder_pretrained(path,
    path)``; returned in train mode, ready to fine-tune.

    The fresh parts (every block's cross-attention; the LM head's transform and bias unless the
    checkpoint has ``cls.predictions``) are initialised as transformers does (N(0,
    initializer_range) weights, zero biases, LayerNorm 1 and 0) from ``seed``, in a forked RNG
    so the caller's global state is left as it was. The start and end ids default to the folder
    tokenizer's [CLS] and [SEP]; padding is the config's ``pad_token_id``.
    """
    checkpoint = read_checkpoint(path)
    if decoder_start_token_id is None or eos_token_id is None:
        cls_id, sep_id = _tokenizer_ids(checkpoint.folder)
        decoder_start_token_id = cls_id if decoder_start_token_id is None else decoder_start_token_id
        eos_token_id = sep_id if eos_token_id is None else eos_token_id
    config = checkpoint.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncoderDecoder(config, config, decoder_start_token_id=decoder_start_token_id,
                               pad_token_id=config.pad_token_id, eos_token_id=eos_token_id)
    load_encoder_weights(model.encoder, checkpoint, init_missing_pooler=True)
    _warm_decoder(model.decoder, checkpoint)
    return model.train()


def _warm_decoder(decoder: CausalLM, checkpoint: Checkpoint) -> None:
    """Copy an encoder checkpoint into a decoder: the body (no pooler) and, where the checkpoint
    has one, BERT's MLM head (``cls.predictions``); the rest keeps its fresh initialisation."""
    warm = {f"bert.{k}": v for k, v in checkpoint.encoder.items() if not k.startswith("pooler.")}
    head = {LM_HEAD_KEYS[k]: v for k, v in checkpoint.heads.items() if k in LM_HEAD_KEYS}
    fresh = {k: v for k, v in decoder.state_dict().items()
             if (k.startswith("head.") or ".cross_attention" in k) and k != "head.decoder.weight"}
    load_decoder_weights(decoder, fresh | warm | head, checkpoint.source)


def warm_start_causal_lm(path: str | os.PathLike = "minilm", *, seed: int = 0) -> CausalLM:
    """A ``CausalLM`` (no cross-attention) from one encoder checkpoint (a folder or
    ``"minilm"``): what ``BertLMHeadModel.from_pretrained(path, is_decoder=True)`` builds. The
    body is the checkpoint's, its attention now causal; the LM head is the checkpoint's
    ``cls.predictions`` or, where it has none, fresh from ``seed`` (in a forked RNG) and tied
    to the word embeddings. Returned in train mode."""
    checkpoint = read_checkpoint(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalLM(checkpoint.config)
    _warm_decoder(model, checkpoint)
    return model.train()

