"""tasks.chat_template against transformers' apply_chat_template with gemma-it's Jinja template."""

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from pipelines import train_tokenizer
from tasks import chat_template as ct

# The chat_template of the released google/gemma-7b-it tokenizer_config.json, copied verbatim.
GEMMA_IT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "  Name a colour.\n"}, {"role": "assistant", "content": "\tHere is one: red.  "}],
    [{"role": "user", "content": "2+2?"}, {"role": "model", "content": "4"},
     {"role": "user", "content": "And times 3?\n\n"}, {"role": "assistant", "content": " 12 "}],
    [{"role": "user", "content": "Ünïcödé — ok?"}, {"role": "assistant", "content": "Yes: 日本語 too."},
     {"role": "user", "content": "Line one\nline two"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
  tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
  tok.chat_template = GEMMA_IT_TEMPLATE
  return tok


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  path = tmp_path_factory.mktemp("sp") / "sample.txt"
  lines = [t["content"].strip() for c in CONVERSATIONS for t in c] * 5 + ["the quick brown fox jumps over the lazy dog"] * 5
  path.write_text("\n".join(lines) + "\n")
  proto = train_tokenizer.train_sentencepiece(str(path), train_tokenizer.gemma_trainer_spec(vocab_size=400))
  proc = spm.SentencePieceProcessor()
  proc.LoadFromSerializedProto(proto)
  return proc


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_matches_gemma_it_template(hf_tokenizer, conversation, add_generation_prompt):
  turns = ct.normalize(conversation)
  ours = ct.render(turns, add_generation_prompt=add_generation_prompt)
  theirs = hf_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
  assert ours.encode("utf-8") == theirs.encode("utf-8")


def test_system_is_folded_into_first_user_turn(hf_tokenizer):
  turns = ct.normalize([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."}])
  assert [t.role for t in turns] == ["user", "model"]
  # gemma-it refuses a system role; what we render equals its rendering of the folded conversation.
  folded = [{"role": "user", "content": "Be brief.\n\nHi"}, {"role": "assistant", "content": "Hello."}]
  assert ct.render(turns) == hf_tokenizer.apply_chat_template(folded, tokenize=False)


@pytest.mark.parametrize("messages,reason", [
    ([{"role": "system", "content": "x"}], "system_only"),
    ([{"role": "assistant", "content": "x"}], "non_alternating"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "non_alternating"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "   "}], "empty_response"),
    ([{"role": "user", "content": "\n"}], "empty_turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "misplaced_system"),
    ([{"role": "narrator", "content": "a"}], "unknown_role"),
    ([{"role": "user", "content": 3}], "malformed"),
    ([], "malformed"),
    ("hello", "malformed"),
])
def test_bad_conversations_have_reasons(messages, reason):
  with pytest.raises(ct.ConversationError) as e:
    ct.normalize(messages)
  assert e.value.reason == reason


def test_require_response():
  with pytest.raises(ct.ConversationError) as e:
    ct.normalize([{"role": "user", "content": "a"}], require_response=True)
  assert e.value.reason == "no_response"


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_token_ids_are_the_rendered_text_and_mask_covers_model_turns(sp, conversation):
  turns = ct.normalize(conversation)
  ids, mask = ct.tokenize_conversation(turns, sp, add_generation_prompt=turns[-1].role == "user")
  assert len(ids) == len(mask)
  # The turn symbols are user-defined pieces of our tokenizer, so the rendered text (without the
  # <bos> control piece) encodes to the same ids.
  text = ct.render(turns, add_generation_prompt=turns[-1].role == "user", bos="")
  assert ids == [sp.bos_id()] + sp.encode(text)
  # The masked tokens decode to exactly the model turns' content, each followed by <end_of_turn>.
  eot = sp.piece_to_id("<end_of_turn>")
  learned, piece = [], []
  for i, m in zip(ids, mask):
    if m:
      if i == eot:
        learned.append(sp.decode(piece))
        piece = []
      else:
        piece.append(i)
  assert piece == []
  assert learned == [t.content for t in turns if t.role == "model"]
  assert sum(mask) == sum(len(sp.encode(t.content)) + 1 for t in turns if t.role == "model")


def test_chat_ids_come_from_the_vocabulary(sp):
  ids = ct.chat_ids(sp)
  assert (ids.start_of_turn, ids.end_of_turn) == (sp.piece_to_id("<start_of_turn>"), sp.piece_to_id("<end_of_turn>"))
  assert sp.id_to_piece(ids.bos) == "<bos>" and sp.id_to_piece(ids.eos) == "<eos>"
