"""Gemma's dialogue format: normalising conversations, rendering them as gemma-it does, tokenizing.

The released gemma-it chat template renders a conversation as

    <bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n{content}<end_of_turn>\\n

with every ``content`` trimmed (Jinja's ``trim`` = ``str.strip()``), and with
``add_generation_prompt`` appends ``<start_of_turn>model\\n``. Gemma has no system role and roles
must alternate user / model starting with the user.

Conversations arrive as users have them (``assistant`` for ``model``, a leading ``system``
message, stray whitespace). ``normalize`` maps them onto Gemma's two roles (a system message is
folded into the first user turn, separated by a blank line) and refuses what cannot be rendered
with a ``ConversationError`` whose ``reason`` is a short name that Beam jobs count rejects by.

``tokenize_conversation`` turns a normalized conversation into token ids and a per-token loss mask
that is 1 exactly on the model turns' content tokens and their ``<end_of_turn>``: never on BOS,
the user turns, the ``<start_of_turn>model\\n`` header (the generation prompt) or the newline
after ``<end_of_turn>``. Special ids come from the vocabulary (``piece_to_id``), so the project's
own SentencePiece model and the released Gemma one both work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from tasks import special_tokens

USER = "user"
MODEL = "model"
SYSTEM = "system"
# Role names people use, mapped to Gemma's. "system" is handled by `normalize` (folded).
ROLE_ALIASES = {"user": USER, "human": USER, "model": MODEL, "assistant": MODEL, "gpt": MODEL,
                "system": SYSTEM}
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
BOS = "<bos>"
# Between a folded system message and the first user message.
SYSTEM_SEPARATOR = "\n\n"


class ConversationError(ValueError):
  """A conversation Gemma's template cannot render; `reason` names the rule it breaks."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str  # USER or MODEL
  content: str  # trimmed, non-empty


def _message(m: Any, i: int) -> tuple[str, str]:
  if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
    raise ConversationError("malformed", f"message {i} is not an object with string 'role' and 'content': {m!r:.200}")
  role = ROLE_ALIASES.get(m["role"].strip().lower())
  if role is None:
    raise ConversationError("unknown_role", f"message {i} has role {m['role']!r}; use one of {sorted(ROLE_ALIASES)}")
  return role, m["content"].strip()


def normalize(messages: Any, require_response: bool = False) -> list[Turn]:
  """Gemma turns (user, model, user, ...) of a list of {"role", "content"} messages.

  A system message is allowed only first and is folded into the first user turn
  (``system + SYSTEM_SEPARATOR + user``). With require_response the last turn must be the
  model's (a training example). Raises ConversationError (reasons: malformed, unknown_role,
  system_only, misplaced_system, non_alternating, empty_turn, empty_response, no_response).
  """
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ConversationError("malformed", f"messages must be a non-empty list, got {messages!r:.200}")
  pairs = [_message(m, i) for i, m in enumerate(messages)]
  system = None
  if pairs[0][0] == SYSTEM:
    system, pairs = pairs[0][1], pairs[1:]
    if not pairs:
      raise ConversationError("system_only", "the conversation has only a system message")
  turns = []
  for i, (role, content) in enumerate(pairs):
    if role == SYSTEM:
      raise ConversationError("misplaced_system", f"a system message may only come first (turn {i})")
    expected = USER if i % 2 == 0 else MODEL
    if role != expected:
      raise ConversationError("non_alternating", f"turn {i} is {role!r}, expected {expected!r} (user first, then alternating)")
    if not content:
      raise ConversationError("empty_response" if role == MODEL else "empty_turn", f"turn {i} ({role}) is empty")
    turns.append(Turn(role, content))
  if system:
    turns[0] = Turn(USER, system + SYSTEM_SEPARATOR + turns[0].content)
  if require_response and turns[-1].role != MODEL:
    raise ConversationError("no_response", "the conversation does not end with a model turn")
  return turns


def render(turns: Sequence[Turn], add_generation_prompt: bool = False, bos: str = BOS) -> str:
  """The text gemma-it's chat template produces for these turns (content is already trimmed)."""
  text = bos + "".join(f"{START_OF_TURN}{t.role}\n{t.content}{END_OF_TURN}\n" for t in turns)
  return text + (f"{START_OF_TURN}{MODEL}\n" if add_generation_prompt else "")


# ---------------------------------------------------------------- tokens


def _processor(vocab):
  """The SentencePieceProcessor of a seqio SentencePieceVocabulary (or the processor itself)."""
  return getattr(vocab, "tokenizer", vocab)


def chat_ids(vocab) -> special_tokens.SpecialTokens:
  """The special ids of the vocabulary (by piece; `tasks.special_tokens`): a clear error if it
  lacks the turn pieces (a tokenizer trained without them cannot do chat)."""
  return special_tokens.special_tokens(vocab)


def _encode_with_prefix(sp, prefix: str, content: str) -> tuple[list[int], int]:
  """Ids of prefix + content encoded as one piece of text, and how many of them belong to prefix.

  Encoding the whole text gives the ids a tokenizer of the rendered string gives (the turn pieces
  split the text there too); the boundary is where the prefix's own encoding ends. If a merge
  crossed the boundary, the first token holding content starts the content.
  """
  ids = sp.encode(prefix + content)
  head = sp.encode(prefix)
  if ids[:len(head)] == head:
    return ids, len(head)
  n = 0
  while n < len(ids) and len(sp.decode(ids[:n + 1])) <= len(prefix):
    n += 1
  return ids, n


def tokenize_conversation(turns: Sequence[Turn], vocab, add_generation_prompt: bool = False,
                          add_bos: bool = True) -> tuple[list[int], list[int]]:
  """(ids, loss_mask) of the rendered conversation; the mask is 1 on model content + <end_of_turn>.

  `ids` are the tokens of `render(turns, add_generation_prompt)` (without BOS if add_bos=False,
  for caches whose reader adds it).
  """
  sp, special = _processor(vocab), chat_ids(vocab)
  newline = sp.encode("\n")
  ids, mask = ([special.bos], [0]) if add_bos else ([], [])
  for turn in turns:
    body, header = _encode_with_prefix(sp, turn.role + "\n", turn.content)
    learn = int(turn.role == MODEL)
    ids += [special.start_of_turn] + body + [special.end_of_turn] + newline
    mask += [0] + [0] * header + [learn] * (len(body) - header) + [learn] + [0] * len(newline)
  if add_generation_prompt:
    header = sp.encode(MODEL + "\n")
    ids += [special.start_of_turn] + header
    mask += [0] * (1 + len(header))
  return ids, mask


def prompt_ids(turns: Sequence[Turn], vocab) -> list[int]:
  """Ids of a conversation that ends with a user turn, plus the generation prompt (for sampling)."""
  if not turns or turns[-1].role != USER:
    raise ConversationError("non_alternating", "a prompt must end with a user turn")
  return tokenize_conversation(turns, vocab, add_generation_prompt=True)[0]


def as_messages(prompt: Any) -> list[dict[str, str]]:
  """A prompt given as text or as a list of messages, as a list of messages."""
  if isinstance(prompt, str):
    return [{"role": USER, "content": prompt}]
  if isinstance(prompt, (list, tuple)):
    return list(prompt)
  raise ConversationError("malformed", f"prompt must be text or a list of messages, got {type(prompt).__name__}")


def with_response(prompt: Any, response: Any) -> list[dict[str, str]]:
  """prompt (text or messages) + one model response (text, or a one-message list) as messages."""
  if isinstance(response, (list, tuple)) and len(response) == 1 and isinstance(response[0], Mapping):
    response = response[0].get("content")
  if not isinstance(response, str):
    raise ConversationError("malformed", f"a response must be text, got {type(response).__name__}")
  return as_messages(prompt) + [{"role": MODEL, "content": response}]


def messages_of(turns: Iterable[Turn]) -> list[dict[str, str]]:
  return [{"role": t.role, "content": t.content} for t in turns]
