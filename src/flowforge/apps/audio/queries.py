r"""Queries of language-queried separation: a class id or a short caption, as a learned bag of words.

FlowSep (Yuan et al. 2024, arXiv:2409.07614) conditions on a FLAN-T5 embedding of a text query. Offline,
with three procedural classes, a query is either a class token ``<harmonic>`` or a 1-3-word caption built
from a small vocabulary with synonyms (:data:`CAPTIONS`); :class:`QueryTokenizer` turns either into padded
token ids ``(B, L)`` and :class:`BagOfWords` embeds them as the mean of learned word vectors,

.. math:: q = \frac{1}{|w|} \sum_{i \in w} E_{i} \in \mathbb R^{d}.

Nothing here understands language: the embedding only learns which words co-occur with which class.

Example:
    >>> import torch
    >>> tok = QueryTokenizer()
    >>> ids = tok.encode(["rising chirp", 0])
    >>> ids.shape, int(ids[1, 0]) == tok.class_token(0)
    (torch.Size([2, 3]), True)
    >>> BagOfWords(tok.vocab_size, 8)(ids).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowforge.apps.audio.sources import SOURCE_CLASSES

__all__ = ["CAPTIONS", "QUERY_TYPES", "QueryTokenizer", "BagOfWords", "random_queries"]

CAPTIONS: dict[str, tuple[str, ...]] = {
    "harmonic": ("harmonic tone", "harmonic stack", "musical note", "pitched tone", "steady hum", "tone"),
    "chirp": ("rising chirp", "upward sweep", "chirp", "rising whistle", "pitch glide", "sweep"),
    "noise": ("noise burst", "hiss", "filtered noise", "static burst", "short hiss", "noise"),
}
QUERY_TYPES = ("class", "caption")
PAD = "<pad>"
MAX_WORDS = 3


class QueryTokenizer:
    """Fixed vocabulary: ``<pad>``, one token a class, then every caption word (sorted).

    :meth:`encode` takes strings (captions; lower-cased, split on spaces) and ints (class ids) and returns
    ``(B, MAX_WORDS)`` int64 ids padded with 0. An unknown word raises a ``ValueError`` listing the words
    that are known.
    """

    def __init__(self) -> None:
        words = sorted({w for caps in CAPTIONS.values() for c in caps for w in c.split()})
        self.vocab: tuple[str, ...] = (PAD, *(f"<{c}>" for c in SOURCE_CLASSES), *words)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of tokens, the padding token included."""
        return len(self.vocab)

    def class_token(self, c: int) -> int:
        """The token id of class ``c``."""
        if not 0 <= int(c) < len(SOURCE_CLASSES):
            raise ValueError(f"class id must be in 0..{len(SOURCE_CLASSES) - 1}, got {c}")
        return 1 + int(c)

    def tokens(self, query: str | int) -> list[int]:
        """Token ids of one query (no padding)."""
        if isinstance(query, bool) or not isinstance(query, int | str):
            raise TypeError(f"a query is a class id (int) or a caption (str), got {type(query).__name__}")
        if isinstance(query, int):
            return [self.class_token(query)]
        words = query.lower().split()
        if not words:
            raise ValueError("empty caption; write e.g. 'rising chirp' or pass a class id")
        if len(words) > MAX_WORDS:
            raise ValueError(f"caption {query!r} has {len(words)} words; use at most {MAX_WORDS}")
        bad = [w for w in words if w not in self.index or w.startswith("<")]
        if bad:
            known = ", ".join(w for w in self.vocab if not w.startswith("<"))
            raise ValueError(
                f"unknown word(s) {bad} in caption {query!r}; the bag-of-words vocabulary is: {known} "
                f"(or pass a class id 0..{len(SOURCE_CLASSES) - 1})"
            )
        return [self.index[w] for w in words]

    def encode(self, queries: Sequence[str | int]) -> Tensor:
        """Padded token ids ``(B, MAX_WORDS)`` (int64) of ``B`` queries."""
        out = torch.zeros(len(queries), MAX_WORDS, dtype=torch.long)
        for i, q in enumerate(queries):
            ids = self.tokens(q)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class BagOfWords(nn.Module):
    """Mean of learned word vectors over the non-padding tokens: ``(B, L)`` ids -> ``(B, dim)``.

    Args:
        vocab_size: number of tokens (id 0 is padding and is ignored).
        dim: embedding dimension :math:`d`.
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1:
            raise ValueError(f"need vocab_size >= 2 and dim >= 1, got {vocab_size}, {dim}")
        self.bag = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids: (B, L)`` int64 -> ``(B, dim)``."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"token ids must be (B, L) int64, got {tuple(ids.shape)} {ids.dtype}")
        if bool((ids[:, 0] == 0).any()):
            raise ValueError("every query needs at least one token (a row starts with padding)")
        return self.bag(ids)


def random_queries(
    classes: Tensor, kind: str, *, generator: torch.Generator, tokenizer: QueryTokenizer | None = None
) -> Tensor:
    """Token ids ``(B, MAX_WORDS)`` asking for ``classes: (B,)``.

    ``kind="class"``: the class token; ``"caption"``: a caption drawn uniformly from the class's
    :data:`CAPTIONS`; ``"mixed"``: either, with probability 1/2 each.
    """
    if kind not in (*QUERY_TYPES, "mixed"):
        raise ValueError(f"unknown query kind {kind!r}; use one of class, caption, mixed")
    tok = tokenizer or QueryTokenizer()
    qs: list[str | int] = []
    for c in classes.tolist():
        use_class = kind == "class" or (kind == "mixed" and bool(torch.rand((), generator=generator) < 0.5))
        if use_class:
            qs.append(int(c))
        else:
            caps = CAPTIONS[SOURCE_CLASSES[int(c)]]
            qs.append(caps[int(torch.randint(len(caps), (), generator=generator))])
    return tok.encode(qs)
