"""Small, pure seqio preprocessors applied after the cache: chunk long documents, add EOS.

The cache holds each document's tokens without BOS/EOS. A Task turns a document into examples
``chunk`` and, for the document's last chunk, ``chunk [EOS]``: ``split_into_chunks`` cuts the
tokens into pieces that fit the training sequence length (so long documents are split, never
truncated) and ends only the last piece with EOS, so the model never learns that a document ends
where a chunk boundary happens to fall.

BOS is not stored in the targets. As in seqio's standard layout, the feature converter shifts the
targets right and puts its ``bos_id`` (the vocabulary's BOS, see ``model.data``) in front of every
segment: a chunk ``[t1 .. tn]`` is trained as ``inputs = [BOS, t1 .. tn-1]``, ``targets = [t1 ..
tn]`` at positions ``0 .. n-1``, exactly the context inference feeds (``[BOS, prompt]`` from
position 0). The model never learns to predict BOS.
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

# Room left in each chunk for the EOS that ends a document (BOS is an input, not a target).
SPECIAL_TOKENS_PER_CHUNK = 1


def chunk_length(
    sequence_length: Optional[Mapping[str, int]],
    max_chunk_tokens: Optional[int],
    feature: str = "targets",
) -> Optional[int]:
  """Content tokens per chunk: ``max_chunk_tokens``, capped so chunk + EOS fits the length.

  Returns None (no splitting) when neither is set.
  """
  limits = []
  if max_chunk_tokens is not None:
    limits.append(max_chunk_tokens)
  if sequence_length is not None and sequence_length.get(feature) is not None:
    limits.append(sequence_length[feature] - SPECIAL_TOKENS_PER_CHUNK)
  if not limits:
    return None
  length = min(limits)
  if length < 1:
    raise ValueError(
        f"Chunks must hold at least one token besides EOS; got a chunk length of {length} "
        f"(sequence_length={dict(sequence_length or {})}, max_chunk_tokens={max_chunk_tokens})."
    )
  return length


def split_into_chunks(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    sequence_length: Optional[Mapping[str, int]] = None,
    max_chunk_tokens: Optional[int] = None,
    feature: str = "targets",
) -> tf.data.Dataset:
  """Splits ``feature`` into consecutive chunks of ``chunk_length(...)`` tokens, one example each,
  and appends the vocabulary's EOS to the last chunk of each document only.

  Other features (e.g. the document ``id``) are copied to every chunk, so a chunk can be traced
  back to its document. Concatenating the chunks of a document gives its tokens and EOS back.
  The number of chunks is ``ceil(n / chunk_length)``, what the tokenize job records per source.
  """
  eos_id = output_features[feature].vocabulary.eos_id
  if eos_id is None or eos_id < 0:
    raise ValueError(f"The vocabulary of '{feature}' has no EOS id.")
  length = chunk_length(sequence_length, max_chunk_tokens, feature)

  def _split(ex):
    tokens = ex[feature]
    num_tokens = tf.size(tokens, out_type=tf.int64)
    size = num_tokens if length is None else tf.constant(length, tf.int64)
    num_chunks = tf.maximum((num_tokens + size - 1) // tf.maximum(size, 1), 1)
    eos = tf.constant([eos_id], dtype=tokens.dtype)

    def _chunk(i):
      chunk = dict(ex)
      piece = tokens[i * size:(i + 1) * size]
      chunk[feature] = tf.cond(
          i == num_chunks - 1, lambda: tf.concat([piece, eos], axis=0), lambda: piece)
      return chunk

    return tf.data.Dataset.range(num_chunks).map(_chunk)

  return dataset.flat_map(_split)
