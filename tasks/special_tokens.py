"""The special token ids of the vocabulary in use, looked up by piece: the one source of truth.

Gemma's special tokens are pieces of its SentencePiece model, and their ids depend on the model:

| piece | released Gemma | the project's own tokenizer (``pipelines.train_tokenizer``) |
| --- | --- | --- |
| ``<pad> <eos> <bos> <unk>`` | 0 1 2 3 | 0 1 2 3 |
| ``<start_of_turn>`` | 106 | 4 |
| ``<end_of_turn>`` | 107 | 5 (107 is a byte piece there) |

So no code hard-codes an id: decoding, stop tokens, the chat template, the feature converters'
``bos_id`` and the eval tasks all take them from ``special_tokens(vocabulary)``, which reads every
id with ``piece_to_id`` and refuses a vocabulary that lacks one of the pieces.

Padding is the exception that proves the rule: seqio's feature converters pad with 0 and the model
masks id 0, whatever the vocabulary says, so ``special_tokens`` also checks that ``<pad>`` is 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Union

import sentencepiece as spm

# The piece of each special token (Gemma's names, gemma/gm/text/_tokenizer.py).
PIECES = {
    "pad": "<pad>",
    "eos": "<eos>",
    "bos": "<bos>",
    "unk": "<unk>",
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
}
# The id that seqio's feature converters (and so every batch) use for padding.
PADDING_ID = 0


class SpecialTokensError(ValueError):
  """A vocabulary that lacks a special piece, or whose declared ids disagree with its pieces."""


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids of Gemma's special pieces in one vocabulary."""

  pad: int
  eos: int
  bos: int
  unk: int
  start_of_turn: int
  end_of_turn: int

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """What ends a generation: the end of a document (EOS) or of a dialogue turn."""
    return (self.eos, self.end_of_turn)


Vocabulary = Union[str, os.PathLike, bytes, spm.SentencePieceProcessor, Any]


def _processor(vocab: Vocabulary) -> tuple[spm.SentencePieceProcessor, str]:
  """A SentencePieceProcessor for a seqio vocabulary, a model path, serialized model or processor."""
  if isinstance(vocab, spm.SentencePieceProcessor):
    return vocab, "the SentencePiece processor"
  if isinstance(vocab, (str, os.PathLike)):
    sp = spm.SentencePieceProcessor()
    try:
      sp.Load(os.fspath(vocab))
    except (OSError, RuntimeError) as e:
      raise SpecialTokensError(f"{os.fspath(vocab)} is not a readable SentencePiece model: {e}") from e
    return sp, os.fspath(vocab)
  if isinstance(vocab, bytes):
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(vocab)
    except (OSError, RuntimeError) as e:
      raise SpecialTokensError(f"The serialized model is not a SentencePiece model: {e}") from e
    return sp, "the serialized SentencePiece model"
  tokenizer = getattr(vocab, "tokenizer", None)  # seqio.SentencePieceVocabulary
  if isinstance(tokenizer, spm.SentencePieceProcessor):
    return tokenizer, getattr(vocab, "sentencepiece_model_file", None) or type(vocab).__name__
  raise SpecialTokensError(
      f"Cannot read special pieces from a {type(vocab).__name__}: give a "
      "seqio.SentencePieceVocabulary, a SentencePiece model path or a SentencePieceProcessor.")


def special_tokens(vocab: Vocabulary) -> SpecialTokens:
  """The ids of ``PIECES`` in ``vocab`` (each by ``piece_to_id``), checked.

  Raises ``SpecialTokensError`` naming the vocabulary when a piece is missing, when an id that
  the model declares for pad/eos/bos/unk is not that piece's id (SentencePiece's own ``bos_id()``
  etc. would then disagree with the pieces), or when ``<pad>`` is not ``PADDING_ID``.
  """
  sp, where = _processor(vocab)
  size = sp.get_piece_size()
  ids, missing = {}, []
  for name, piece in PIECES.items():
    i = sp.piece_to_id(piece)
    # piece_to_id gives the unk id for an unknown piece, so check that the id holds the piece.
    if not 0 <= i < size or sp.id_to_piece(i) != piece:
      missing.append(piece)
    ids[name] = i
  if missing:
    raise SpecialTokensError(
        f"{where} has no piece {', '.join(missing)}; Gemma models need all of "
        f"{', '.join(PIECES.values())} (train the tokenizer with pipelines.train_tokenizer, or use "
        "the released Gemma tokenizer.model).")
  declared = {"pad": sp.pad_id(), "eos": sp.eos_id(), "bos": sp.bos_id(), "unk": sp.unk_id()}
  wrong = {name: (declared[name], ids[name]) for name in declared if declared[name] != ids[name]}
  if wrong:
    detail = ", ".join(f"{name}_id={d} but {PIECES[name]} is id {p}" for name, (d, p) in wrong.items())
    raise SpecialTokensError(f"{where} declares special ids that are not its pieces: {detail}.")
  if ids["pad"] != PADDING_ID:
    raise SpecialTokensError(
        f"{where} has <pad> at id {ids['pad']}, but seqio pads batches with {PADDING_ID} and the "
        f"model masks id {PADDING_ID}: <pad> must be id {PADDING_ID}.")
  return SpecialTokens(**ids)
