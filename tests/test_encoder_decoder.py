"""Decoders in HF format (hf/encoder_decoder.py): round trips with transformers, warm starting
from the published MiniLM checkpoint, and the errors of a bad folder.

What is held, and how closely:
- A minift model saved is loaded by transformers with no missing or unexpected key and gives the
  same logits and loss (random tiny models: atol 1e-5 in fp32).
- Warm starting from MiniLM gives exactly transformers' ``from_encoder_decoder_pretrained``
  weights except the freshly initialised ones, which are exactly the cross-attention and LM-head
  transform matrices (biases 0, LayerNorm 1/0 on both sides); those are N(0, 0.02) within
  stated statistical bounds.
- Published checkpoint, both directions (minift warm start -> transformers; transformers warm
  start -> minift): logits within atol 1e-4, the project's bound for the real MiniLM weights
  (test_model.py). Found: 2e-5 to 5e-5 on logits up to about 6 in size, twelve blocks deep.
"""

import json

import pytest
import torch
import transformers
from tiny_heads import randomize_

from minift.core.decoder import CausalLM, EncoderDecoder
from minift.core.model import BertConfig, ConfigError
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import CheckpointError, save_bert
from minift.hf.encoder_decoder import (
    decoder_to_hf,
    load_causal_lm,
    load_encoder_decoder,
    save_causal_lm,
    save_encoder_decoder,
    warm_start,
)
from minift.hf.safetensors import read_safetensors, write_safetensors

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")]

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=24, max_position_embeddings=20)
SOURCES = ["name[The Eagle], eatType[coffee shop], food[French]", "name[Zizzi], area[riverside]"]
TARGETS = ["The Eagle is a French coffee shop.", "Zizzi is by the river, and cheap."]


def tiny_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, SMALL["vocab_size"], (3, 7), generator=gen)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0, 1, 1, 0, 1, 1, 1]])
    labels = torch.randint(3, SMALL["vocab_size"], (3, 5), generator=gen)
    labels[1, 3:] = -100
    return input_ids, mask, labels


def test_minift_encoder_decoder_loads_in_transformers(tmp_path):
    ours = randomize_(EncoderDecoder(BertConfig(**SMALL), BertConfig(**SMALL | dict(vocab_size=30)),
                                     decoder_start_token_id=2, pad_token_id=0, eos_token_id=3), 1)
    save_encoder_decoder(ours, tmp_path)
    hf, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert (hf.config.decoder_start_token_id, hf.config.pad_token_id,
            hf.config.eos_token_id) == (2, 0, 3)
    input_ids, mask, labels = tiny_batch()
    labels = labels.clamp(max=29)
    with torch.no_grad():
        want = hf.eval()(input_ids=input_ids, attention_mask=mask, labels=labels)
        got = ours(input_ids, mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    again = load_encoder_decoder(tmp_path)  # and back: every tensor as saved
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_minift_causal_lm_loads_in_transformers(tmp_path):
    ours = randomize_(CausalLM(BertConfig(**SMALL)), 2)
    save_causal_lm(ours, tmp_path)
    hf, info = transformers.BertLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.is_decoder and not hf.config.add_cross_attention
    input_ids, mask, _ = tiny_batch()
    mask[:, 0] = 1  # a causal row needs its first key
    with torch.no_grad():
        want = hf.eval()(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        got = ours(input_ids, mask, labels=input_ids)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    assert torch.equal(load_causal_lm(tmp_path).head.transform.weight, ours.head.transform.weight)


def test_a_decoder_with_cross_attention_round_trips(tmp_path):
    ours = randomize_(CausalLM(BertConfig(**SMALL), cross_attention=True), 3)
    save_causal_lm(ours, tmp_path)
    hf, info = transformers.BertLMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.add_cross_attention
    again = load_causal_lm(tmp_path)
    assert again.bert.cross_attention
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


# --- The published checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_warm(minilm_dir):
    """transformers' BERT2BERT warm start from MiniLM, with BERT's start/end/pad ids."""
    torch.manual_seed(0)
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir,
                                                                            minilm_dir)
    model.config.decoder_start_token_id, model.config.eos_token_id = 101, 102
    model.config.pad_token_id = 0
    return model.eval()


def real_batch(minilm_dir):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    source = tokenizer(SOURCES)
    target = tokenizer(TARGETS)
    labels = target["input_ids"][:, 1:].masked_fill(target["attention_mask"][:, 1:] == 0, -100)
    return source["input_ids"], source["attention_mask"], labels  # labels without [CLS]


def to_hf_names(model: EncoderDecoder) -> dict[str, torch.Tensor]:
    from minift.hf.checkpoint import to_hf_state_dict

    return (to_hf_state_dict(model.encoder.state_dict(), prefix="encoder.")
            | decoder_to_hf(model.decoder.state_dict(), prefix="decoder."))


def test_warm_start_is_transformers_warm_start_but_for_the_fresh_weights(hf_warm):
    ours = warm_start("minilm", seed=0)
    assert ours.training and (ours.decoder_start_token_id, ours.eos_token_id,
                              ours.pad_token_id) == (101, 102, 0)
    theirs = {k: v for k, v in hf_warm.state_dict().items()
              if k not in ("decoder.cls.predictions.decoder.weight",
                           "decoder.cls.predictions.decoder.bias")}  # tied, not stored
    mine = to_hf_names(ours)
    assert set(mine) == set(theirs)
    differ = {name for name in mine if not torch.equal(mine[name], theirs[name])}
    fresh = {f"decoder.bert.encoder.layer.{i}.crossattention.{part}.weight"
             for i in range(6) for part in ("self.query", "self.key", "self.value",
                                            "output.dense")}
    assert differ == fresh | {"decoder.cls.predictions.transform.dense.weight"}
    # The fresh matrices: N(0, 0.02), 384 x 384 = 147,456 draws each. The sample std has a
    # standard error of 0.02 / sqrt(2n) (0.18%) and the mean 0.02 / sqrt(n) (5.2e-5): bounds of
    # 1.5% and 3.2e-4 are 8 and 6 standard errors, missed less than once in a million runs.
    for name in differ:
        w = mine[name]
        assert abs(w.std().item() - 0.02) < 0.015 * 0.02, name
        assert abs(w.mean().item()) < 3.2e-4, name
    # Fresh biases and norms as transformers sets them (equal on both sides, asserted above).
    assert torch.equal(mine["decoder.cls.predictions.bias"], torch.zeros(30522))
    assert torch.equal(mine["decoder.bert.encoder.layer.0.crossattention.output.LayerNorm.weight"],
                       torch.ones(384))


def test_warm_start_is_seeded_and_leaves_the_global_rng_alone(tiny):
    state = torch.random.get_rng_state()
    a, b = warm_start(tiny, seed=3), warm_start(tiny, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    name = "layers.0.cross_attention.query.weight"
    assert torch.equal(a.decoder.bert.state_dict()[name], b.decoder.bert.state_dict()[name])
    c = warm_start(tiny, seed=4)
    assert not torch.equal(a.decoder.bert.state_dict()[name], c.decoder.bert.state_dict()[name])


def test_published_checkpoint_both_ways(hf_warm, minilm_dir, tmp_path):
    input_ids, mask, labels = real_batch(minilm_dir)
    ours = warm_start("minilm", seed=1).eval()
    save_encoder_decoder(ours, tmp_path / "minift")
    loaded, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "minift",
                                                                   output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf_warm.save_pretrained(tmp_path / "transformers")
    for hf, mine in ((loaded.eval(), ours),
                     (hf_warm, load_encoder_decoder(tmp_path / "transformers"))):
        with torch.no_grad():
            want = hf(input_ids=input_ids, attention_mask=mask, labels=labels)
            got = mine(input_ids, mask, labels=labels)
        torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.loss, want.loss, atol=1e-4, rtol=0)


# --- Bad folders ----------------------------------------------------------------------------------


def test_an_encoder_folder_is_not_a_decoder(tmp_path):
    from minift.core.model import BertModel

    save_bert(BertModel(BertConfig(**SMALL)), tmp_path)
    with pytest.raises(ConfigError, match="is_decoder is None, expected true"):
        load_causal_lm(tmp_path)
    with pytest.raises(ConfigError, match="model_type is 'bert', expected 'encoder-decoder'"):
        load_encoder_decoder(tmp_path)


@pytest.fixture
def saved_pair(tmp_path):
    model = EncoderDecoder(BertConfig(**SMALL), BertConfig(**SMALL), decoder_start_token_id=1,
                           pad_token_id=0)
    save_encoder_decoder(model, tmp_path)
    return tmp_path


def edit_weights(folder, change) -> None:
    tensors = read_safetensors(folder / "model.safetensors")
    change(tensors)
    write_safetensors(tensors, folder / "model.safetensors")


def test_a_stray_or_missing_weight_is_named(saved_pair):
    edit_weights(saved_pair, lambda t: t.update(extra=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="neither under encoder. nor decoder.: extra"):
        load_encoder_decoder(saved_pair)
    name = "decoder.bert.encoder.layer.1.crossattention.self.key.bias"
    edit_weights(saved_pair, lambda t: (t.pop("extra"), t.pop(name)))
    with pytest.raises(CheckpointError, match="missing keys .*layers.1.cross_attention.key.bias"):
        load_encoder_decoder(saved_pair)


def test_an_untied_lm_head_is_refused(saved_pair):
    edit_weights(saved_pair, lambda t: t.update({
        "decoder.cls.predictions.decoder.weight":
            t["decoder.bert.embeddings.word_embeddings.weight"] + 1}))
    with pytest.raises(CheckpointError, match="cls.predictions.decoder.weight differs from"):
        load_encoder_decoder(saved_pair)


def test_a_config_without_token_ids_or_with_untied_head_is_refused(saved_pair):
    config_file = saved_pair / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"decoder_start_token_id": None}))
    with pytest.raises(ConfigError, match="decoder_start_token_id must be an integer"):
        load_encoder_decoder(saved_pair)
    config["decoder"]["tie_word_embeddings"] = False
    config_file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="tie_word_embeddings is false"):
        load_encoder_decoder(saved_pair)
