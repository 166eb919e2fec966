"""tasks.special_tokens against real SentencePiece models: the project's layout and Gemma's."""

import io
import random

import pytest
import seqio
import sentencepiece as spm

from pipelines import train_tokenizer
from tasks import special_tokens as st

WORDS = ("the of and to in data model token beam pipeline gemma seqio train text web page quality "
         "filter shard cache vocabulary language source document paragraph sentence code value").split()


def sample_lines(n=400, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) + f" {rng.randint(0, 999)}."
          for _ in range(n)]


def train_model(**spec) -> bytes:
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sample_lines()), model_writer=proto, **spec)
  return proto.getvalue()


def processor(proto: bytes) -> spm.SentencePieceProcessor:
  sp = spm.SentencePieceProcessor()
  sp.LoadFromSerializedProto(proto)
  return sp


@pytest.fixture(scope="module")
def project_model():
  """Trained exactly as pipelines.train_tokenizer trains (its own trainer spec)."""
  return train_model(**train_tokenizer.gemma_trainer_spec(vocab_size=400, max_whitespace_run=4))


# The released Gemma tokenizer's layout of its first 108 ids: the four specials, <mask>, <2mass>,
# [@BOS@], <unused0>..<unused98> (ids 4-105), then the turn markers at 106 and 107.
GEMMA_CONTROL = ["<mask>", "<2mass>", "[@BOS@]"] + [f"<unused{i}>" for i in range(99)]


@pytest.fixture(scope="module")
def gemma_layout_model():
  spec = train_tokenizer.gemma_trainer_spec(vocab_size=500, max_whitespace_run=4)
  spec["control_symbols"] = GEMMA_CONTROL
  spec["user_defined_symbols"] = ["<start_of_turn>", "<end_of_turn>"]
  return train_model(**spec)


def test_project_tokenizer_ids(project_model, tmp_path):
  sp = processor(project_model)
  tokens = st.special_tokens(sp)
  # The pieces the trainer defines, read independently of special_tokens.
  assert [sp.id_to_piece(i) for i in range(6)] == [
      "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
  assert tokens == st.SpecialTokens(pad=0, eos=1, bos=2, unk=3, start_of_turn=4, end_of_turn=5)
  assert tokens.stop_ids == (1, 5)
  # 107, <end_of_turn> in the released vocabulary, is an ordinary byte piece here.
  assert sp.id_to_piece(107).startswith("<0x")
  assert sp.encode("<end_of_turn>") == [tokens.end_of_turn]  # User-defined: text encodes to it.
  # Every accepted form of the vocabulary gives the same ids.
  path = tmp_path / "tokenizer.model"
  path.write_bytes(project_model)
  assert st.special_tokens(str(path)) == st.special_tokens(path) == tokens
  assert st.special_tokens(project_model) == tokens
  assert st.special_tokens(seqio.SentencePieceVocabulary(str(path))) == tokens


def test_released_gemma_layout(gemma_layout_model):
  sp = processor(gemma_layout_model)
  assert sp.id_to_piece(106) == "<start_of_turn>" and sp.id_to_piece(107) == "<end_of_turn>"
  tokens = st.special_tokens(sp)
  assert tokens == st.SpecialTokens(pad=0, eos=1, bos=2, unk=3, start_of_turn=106, end_of_turn=107)
  assert tokens.stop_ids == (1, 107)
  assert sp.encode("<start_of_turn>user")[:1] == [106]


def test_missing_piece_is_refused(tmp_path):
  spec = train_tokenizer.gemma_trainer_spec(vocab_size=400, max_whitespace_run=4)
  spec["user_defined_symbols"] = [s for s in spec["user_defined_symbols"] if s != "<end_of_turn>"]
  with pytest.raises(st.SpecialTokensError, match="has no piece <end_of_turn>"):
    st.special_tokens(processor(train_model(**spec)))


def test_other_special_layouts_are_refused():
  # SentencePiece's defaults (unk=0, bos=1, eos=2, no pad) with Gemma's piece names: pad missing.
  spec = dict(vocab_size=150, hard_vocab_limit=False, minloglevel=2, bos_piece="<bos>", eos_piece="<eos>",
              user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
  with pytest.raises(st.SpecialTokensError, match="has no piece <pad>"):
    st.special_tokens(train_model(**spec))
  # All pieces present but <pad> is not id 0.
  spec.update(pad_id=3, pad_piece="<pad>", unk_id=0, bos_id=2, eos_id=1)
  with pytest.raises(st.SpecialTokensError, match="<pad> at id 3.*must be id 0"):
    st.special_tokens(train_model(**spec))


def test_unusable_inputs_are_refused(tmp_path):
  with pytest.raises(st.SpecialTokensError, match="not a readable SentencePiece model"):
    st.special_tokens(str(tmp_path / "missing.model"))
  with pytest.raises(st.SpecialTokensError, match="not a SentencePiece model"):
    st.special_tokens(b"junk")
  with pytest.raises(st.SpecialTokensError, match="PassThroughVocabulary"):
    st.special_tokens(seqio.PassThroughVocabulary(10))
