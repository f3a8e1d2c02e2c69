r"""Token sequences for discrete flows: tokenisers, a vocabulary with padding, an embedded grammar, text files.

A discrete flow generates fixed-size integer tensors ``(N, L)``. This module turns strings into such
tensors and back:

- a **tokeniser** splits a string into tokens and joins them again: :class:`CharTokenizer` (every
  character a token) or :class:`SmilesTokenizer` (the usual SMILES regex, which keeps bracket atoms
  ``[C@@H]``, ``[1*]``, two-letter atoms ``Cl``/``Br`` and ring closures ``%10`` whole; this is the
  "fragment-aware" one, and it keeps the space and ``.`` that join fragments), or :class:`SelfiesTokenizer`
  (SMILES in and out, SELFIES tokens in between: every token sequence is a valid molecule);
- a :class:`Vocabulary` maps tokens to ids, with the padding token ``<pad>`` at id 0, pads every
  sequence to a fixed length ``L`` and saves itself as JSON (:meth:`Vocabulary.to_dict`);
- an **embedded data set** needing no download and no extra package, with a checkable notion of
  validity: arithmetic expressions over single digits (:func:`expressions`,
  :func:`is_valid_expression`) and balanced brackets (:func:`bracket_words`, :func:`is_balanced`);
- :func:`load_sequences` reads a user's own ``.txt`` (one sequence a line) or ``.smi`` file.

Example:
    >>> vocab = Vocabulary.build(expressions(100, seed=0))
    >>> ids = vocab.encode(["(1+2)*3", "4"], length=8)
    >>> ids.shape, ids.dtype
    (torch.Size([2, 8]), torch.int64)
    >>> vocab.decode(ids)
    ['(1+2)*3', '4']
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowforge.core.choices import suggest, unknown_choice

__all__ = [
    "PAD",
    "CharTokenizer",
    "SmilesTokenizer",
    "SelfiesTokenizer",
    "Vocabulary",
    "TOKENIZERS",
    "expressions",
    "is_valid_expression",
    "bracket_words",
    "is_balanced",
    "load_sequences",
    "SEQUENCE_EXTENSIONS",
]

#: The padding token: id 0 in every :class:`Vocabulary`. It cannot appear in a character or SMILES
#: corpus as one token, because both tokenisers split ``"<pad>"`` into several tokens.
PAD = "<pad>"


class CharTokenizer:
    """Every character is one token (spaces included).

    Example:
        >>> CharTokenizer().split("(1+2)")
        ['(', '1', '+', '2', ')']
    """

    name = "char"

    def split(self, text: str) -> list[str]:
        """The characters of ``text``."""
        return list(text)

    def join(self, tokens: Iterable[str]) -> str:
        """Concatenate tokens back into a string."""
        return "".join(tokens)

    def __repr__(self) -> str:
        return "CharTokenizer()"


# Order matters: bracket atoms first, then the two-letter organic atoms, then single characters.
_SMILES_PATTERN = (
    r"\[[^\[\]]+\]"  # bracket atoms: [C@@H], [nH], [O-], [1*] (fragment attachment points), [Na+]
    r"|Br|Cl"  # the two-letter members of the organic subset
    r"|%\([0-9]+\)|%[0-9]{2}"  # ring closures %(123) and %10 .. %99
    r"|[BCNOPSFI]|[bcnops]"  # one-letter organic subset, aliphatic and aromatic
    r"|\*"  # a bare wildcard / dummy atom
    r"|[0-9]"  # one-digit ring closures
    r"|[()=#\-+\\/:~@?>$.]"  # branches, bonds, chirality marks, reaction arrow, dot (disconnected parts)
    r"| "  # space: InVirtuoGen joins the fragments of a molecule with spaces
)
_SMILES_RE = re.compile(_SMILES_PATTERN)


class SmilesTokenizer:
    r"""SMILES split by the usual regex (Schwaller et al., "Molecular Transformer", 2019), extended for fragments.

    Multi-character atoms stay one token: bracket atoms (``[C@@H]``, ``[nH]``, ``[O-]``, and the
    numbered attachment points ``[1*]`` of fragment SMILES), ``Cl``, ``Br`` and the two-digit ring
    closures ``%10``. Bonds, branches, single-digit ring closures, ``.`` and the space that
    InVirtuoGen puts between fragments are one token each. A character the regex does not cover
    (``X``, a lone ``]``, an unbracketed ``Na``) raises a ``ValueError`` instead of being dropped.

    Example:
        >>> SmilesTokenizer().split("C[C@@H](Cl)c1ccc(Br)cc1%10")
        ['C', '[C@@H]', '(', 'Cl', ')', 'c', '1', 'c', 'c', 'c', '(', 'Br', ')', 'c', 'c', '1', '%10']
        >>> SmilesTokenizer().split("[1*]CC(=O)O [1*]c1ccccc1")[:5]
        ['[1*]', 'C', 'C', '(', '=']
    """

    name = "smiles"
    pattern = _SMILES_PATTERN

    def split(self, text: str) -> list[str]:
        """The SMILES tokens of ``text``; raises ``ValueError`` on a character no token covers."""
        tokens: list[str] = []
        pos = 0
        while pos < len(text):
            m = _SMILES_RE.match(text, pos)
            if m is None:
                raise ValueError(
                    f"cannot split {text!r} into SMILES tokens: {text[pos]!r} at position {pos} starts no "
                    "SMILES token (atoms outside the organic subset B C N O P S F Cl Br I need brackets, "
                    "e.g. [Na+]); fix the string, or use CharTokenizer() for text that is not SMILES"
                )
            tokens.append(m.group())
            pos = m.end()
        return tokens

    def join(self, tokens: Iterable[str]) -> str:
        """Concatenate tokens back into a SMILES string."""
        return "".join(tokens)

    def __repr__(self) -> str:
        return "SmilesTokenizer()"


class SelfiesTokenizer:
    r"""SMILES in and out, SELFIES tokens in between (Krenn et al. 2020, "Self-referencing embedded strings").

    :meth:`split` encodes a SMILES as SELFIES (``selfies.encoder``) and splits it into its bracketed tokens
    (``[C]``, ``[=O]``, ``[Ring1]``, ``[Branch1]``, ``[N+1]``; ``.`` between fragments); :meth:`join`
    decodes tokens with ``selfies.decoder`` and returns RDKit's **canonical** SMILES. A flow over a
    :class:`Vocabulary` with this tokeniser therefore generates SELFIES while everything around it (data,
    metrics, the genetic operators, the oracle) speaks SMILES.

    SELFIES is a grammar in which **every** token sequence derives a molecule: a bond or a ring that would
    break a valence rule is lowered or dropped, a branch or ring token without enough tokens after it reads
    the next tokens as its size. What can still fail is only the empty molecule: a sequence of tokens that
    add no atom (``[Ring1]`` alone, or an immediate padding token) decodes to ``""``, which validity counts
    as invalid. A SMILES that SELFIES cannot encode (a valence above its limits, e.g. some hypervalent or
    metal atoms) raises ``ValueError`` in :meth:`split`.

    Needs ``selfies`` and RDKit (``pip install 'flowforge[molecules]'``), imported when first used.

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> t = SelfiesTokenizer()
        >>> t.split("OCC=O") if rdkit_available() else ['[O]', '[C]', '[C]', '[=O]']
        ['[O]', '[C]', '[C]', '[=O]']
        >>> t.join(["[C]", "[C]", "[O]"]) if rdkit_available() else "CCO"
        'CCO'
        >>> t.join(["[O]", "[=C]", "[Ring1]"]) if rdkit_available() else "C=O"
        'C=O'
    """

    name = "selfies"

    @staticmethod
    def _selfies():
        try:
            import selfies
        except ImportError:
            raise ImportError(
                "SelfiesTokenizer needs the selfies package, which is not installed; install it with: "
                "pip install 'flowforge[molecules]' (or pip install selfies)"
            ) from None
        return selfies

    def split(self, text: str) -> list[str]:
        """The SELFIES tokens of the SMILES ``text``; raises ``ValueError`` if SELFIES cannot encode it."""
        sf = self._selfies()
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"cannot encode {text!r} as SELFIES: give a non-empty SMILES string")
        try:
            encoded = sf.encoder(text, strict=True)
        except sf.EncoderError as e:
            raise ValueError(
                f"cannot encode {text!r} as SELFIES ({str(e).splitlines()[0]}); fix the SMILES or drop it "
                "(SELFIES refuses atoms above its valence limits), or use SmilesTokenizer()"
            ) from None
        if encoded is None:
            raise ValueError(f"cannot encode {text!r} as SELFIES; fix the SMILES or drop it")
        return list(sf.split_selfies(encoded))

    def join(self, tokens: Iterable[str]) -> str:
        """RDKit's canonical SMILES of the SELFIES ``tokens`` (``""`` for the empty molecule)."""
        sf = self._selfies()
        from flowforge.data.molecules import canonical

        try:
            smiles = sf.decoder("".join(tokens))
        except sf.DecoderError:
            return ""
        if not smiles:
            return ""
        out = canonical(smiles)
        return smiles if out is None else out

    def __repr__(self) -> str:
        return "SelfiesTokenizer()"


#: Tokeniser classes by the name stored in a vocabulary's JSON (:meth:`Vocabulary.from_dict`).
TOKENIZERS: dict[str, type] = {"char": CharTokenizer, "smiles": SmilesTokenizer, "selfies": SelfiesTokenizer}

_TOO_LONG = ("raise", "drop")


class Vocabulary:
    """Token strings <-> integer ids, with :data:`PAD` at id 0, and padding to a fixed length.

    Ids are ``0`` for ``<pad>`` and ``1..V-1`` for ``tokens`` in the order given (:meth:`build` sorts
    them). A discrete flow over this vocabulary generates ``(N, L)`` ids in ``[0, V)``; a masked-source
    flow that needs a mask id uses ``V`` (one past the vocabulary), which :meth:`decode` refuses.

    **Padding convention.** :meth:`encode` writes a sequence's tokens first and pads on the right.
    :meth:`decode` reads up to the **first** ``<pad>`` and ignores everything after it, so a generated
    ``[1, +, <pad>, 2]`` decodes to ``"1+"``: a generator must learn to put padding only at the end.

    Args:
        tokens: the non-padding tokens, without duplicates and without ``"<pad>"``.
        tokenizer: how strings are split into tokens (:class:`CharTokenizer` by default).

    Example:
        >>> v = Vocabulary(["a", "b"])
        >>> v.encode(["ab", "b"], length=3).tolist()
        [[1, 2, 0], [2, 0, 0]]
        >>> v.decode(torch.tensor([[2, 1, 0], [1, 0, 2]]))
        ['ba', 'a']
    """

    def __init__(
        self,
        tokens: Sequence[str],
        tokenizer: CharTokenizer | SmilesTokenizer | SelfiesTokenizer | None = None,
    ):
        tokens = list(tokens)
        if PAD in tokens:
            raise ValueError(f"tokens must not contain the padding token {PAD!r}; it is added as id 0")
        bad = [t for t in tokens if not isinstance(t, str) or not t]
        if bad:
            raise ValueError(f"every token must be a non-empty string, got {bad[:3]!r}")
        dup = sorted({t for t in tokens if tokens.count(t) > 1})
        if dup:
            raise ValueError(f"tokens must be unique; {dup[:5]!r} appear more than once")
        self.tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        self.tokens: tuple[str, ...] = (PAD, *tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    pad_id = 0

    @classmethod
    def build(
        cls,
        strings: Iterable[str],
        tokenizer: CharTokenizer | SmilesTokenizer | SelfiesTokenizer | None = None,
        *,
        extra: Iterable[str] = (),
    ) -> Vocabulary:
        """The vocabulary of every token in a corpus (sorted), plus ``extra`` tokens.

        Args:
            strings: the corpus; each string is split with ``tokenizer``.
            tokenizer: :class:`CharTokenizer` (default), :class:`SmilesTokenizer` or :class:`SelfiesTokenizer`.
            extra: tokens to add although the corpus lacks them (e.g. those a later data set needs).

        Example:
            >>> Vocabulary.build(["CCO", "c1ccccc1Cl"], SmilesTokenizer()).tokens
            ('<pad>', '1', 'C', 'Cl', 'O', 'c')
        """
        tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        if isinstance(strings, str):
            raise TypeError("strings must be a list of strings, not one string; write build([text])")
        seen: set[str] = set(extra)
        n = 0
        for s in strings:
            seen.update(tokenizer.split(s))
            n += 1
        if not seen:
            raise ValueError(f"cannot build a vocabulary: the corpus ({n} strings) has no tokens")
        return cls(sorted(seen), tokenizer)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens incl. {PAD!r}, tokenizer={self.tokenizer!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.tokens == other.tokens
            and self.tokenizer.name == other.tokenizer.name
        )

    def __hash__(self) -> int:
        return hash((self.tokens, self.tokenizer.name))

    def tokenize(self, text: str) -> list[int]:
        """The ids of one string's tokens (no padding); raises ``ValueError`` on an unknown token."""
        out = []
        for tok in self.tokenizer.split(text):
            i = self._ids.get(tok)
            if i is None:
                shown = sorted(self.tokens[1:])
                shown_txt = " ".join(shown[:40]) + (" ..." if len(shown) > 40 else "")
                raise ValueError(
                    f"unknown token {tok!r} in {text!r}; this vocabulary has {len(self) - 1} tokens "
                    f"({shown_txt}){suggest(tok, shown)}. Rebuild it from a corpus that contains {tok!r} "
                    f"(Vocabulary.build(strings, extra=[{tok!r}])) or remove the string"
                )
            if i == self.pad_id:  # unreachable for char/smiles tokenisers; kept for custom ones
                raise ValueError(f"{text!r} contains the padding token {PAD!r}; remove it")
            out.append(i)
        return out

    def lengths(self, strings: Iterable[str]) -> list[int]:
        """Number of tokens of each string (useful to choose ``length`` for :meth:`encode`)."""
        return [len(self.tokenizer.split(s)) for s in strings]

    def encode(self, strings: Sequence[str], length: int, *, too_long: str = "raise") -> Tensor:
        """Token ids padded on the right with ``<pad>`` (id 0) to ``length``.

        Args:
            strings: ``N`` strings.
            length: ``L``, the fixed sequence length.
            too_long: what to do with a string of more than ``L`` tokens: ``"raise"`` (default) a
                ``ValueError`` naming it, or ``"drop"`` it, with a warning that gives how many were dropped.

        Returns:
            ``(N', L)`` int64 ids, ``N' = N`` unless strings were dropped.

        Example:
            >>> v = Vocabulary(["1", "+"])
            >>> import warnings
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     ids = v.encode(["1+1", "1+1+1"], 3, too_long="drop")
            >>> ids.tolist()
            [[1, 2, 1]]
            >>> print(caught[0].message)
            dropped 1 of 2 strings longer than length=3 tokens (the longest has 5); pass length=5 to keep them
            >>> v.lengths(["1+1", "1+1+1"])
            [3, 5]
        """
        if isinstance(strings, str):
            raise TypeError("strings must be a list of strings, not one string; write encode([text], length)")
        if too_long not in _TOO_LONG:
            raise unknown_choice("too_long option", too_long, _TOO_LONG)
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        rows: list[list[int]] = []
        dropped = 0
        longest = 0
        for s in strings:
            ids = self.tokenize(s)
            if len(ids) > length:
                if too_long == "raise":
                    raise ValueError(
                        f"{s!r} has {len(ids)} tokens, more than length={length}; pass a larger length "
                        "(see Vocabulary.lengths) or too_long='drop' to skip such strings"
                    )
                dropped += 1
                longest = max(longest, len(ids))
                continue
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        if dropped:
            warnings.warn(
                f"dropped {dropped} of {dropped + len(rows)} strings longer than length={length} tokens "
                f"(the longest has {longest}); pass length={longest} to keep them",
                stacklevel=2,
            )
        if not rows:
            return torch.zeros(0, length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, ids: Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Strings from ids ``(N, L)``: tokens up to the first ``<pad>``, joined.

        Raises ``ValueError`` for an id outside ``[0, V)`` (e.g. a mask id left in a sample).
        """
        x = torch.as_tensor(ids)
        if x.ndim == 1:
            raise ValueError(f"ids must have shape (N, L), got {tuple(x.shape)}; write decode(ids[None])")
        if x.ndim != 2:
            raise ValueError(f"ids must have shape (N, L), got {tuple(x.shape)}")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"ids must be integers, got dtype {x.dtype}; write ids.long()")
        if x.numel() and (x.min() < 0 or x.max() >= len(self)):
            bad = x[(x < 0) | (x >= len(self))][0].item()
            raise ValueError(
                f"id {bad} is outside this vocabulary's range [0, {len(self)}); "
                f"a mask id ({len(self)}) must be replaced by sampling before decoding"
            )
        out = []
        for row in x.tolist():
            toks = []
            for i in row:
                if i == self.pad_id:
                    break
                toks.append(self.tokens[i])
            out.append(self.tokenizer.join(toks))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description: ``{"tokenizer": name, "tokens": [...]}`` (``<pad>`` excluded).

        Example:
            >>> v = Vocabulary.build(["CCl"], SmilesTokenizer())
            >>> v.to_dict()
            {'tokenizer': 'smiles', 'pad': '<pad>', 'tokens': ['C', 'Cl']}
            >>> Vocabulary.from_dict(v.to_dict()) == v
            True
        """
        return {"tokenizer": self.tokenizer.name, "pad": PAD, "tokens": list(self.tokens[1:])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """The vocabulary that :meth:`to_dict` described."""
        if not isinstance(d, dict) or "tokens" not in d:
            raise ValueError(
                "a vocabulary dict needs a 'tokens' list (and a 'tokenizer' name); "
                "write it with Vocabulary.to_dict()"
            )
        name = d.get("tokenizer", "char")
        if name not in TOKENIZERS:
            raise unknown_choice("tokenizer", name, TOKENIZERS)
        if d.get("pad", PAD) != PAD:
            raise ValueError(f"this vocabulary was saved with padding token {d['pad']!r}; expected {PAD!r}")
        return cls(d["tokens"], TOKENIZERS[name]())


# ----------------------------------------------------------------------------------------------------
# Embedded grammar: arithmetic expressions over single digits
# ----------------------------------------------------------------------------------------------------

_DIGITS = "0123456789"


def _gen_expr(rng: random.Random, depth: int, max_depth: int) -> str:
    n_terms = rng.choices((1, 2, 3), weights=(0.35, 0.45, 0.2))[0]
    out = _gen_term(rng, depth, max_depth)
    for _ in range(n_terms - 1):
        out += rng.choice("+-") + _gen_term(rng, depth, max_depth)
    return out


def _gen_term(rng: random.Random, depth: int, max_depth: int) -> str:
    n_factors = rng.choices((1, 2, 3), weights=(0.5, 0.4, 0.1))[0]
    return "*".join(_gen_factor(rng, depth, max_depth) for _ in range(n_factors))


def _gen_factor(rng: random.Random, depth: int, max_depth: int) -> str:
    if depth < max_depth and rng.random() < 0.45:
        return "(" + _gen_expr(rng, depth + 1, max_depth) + ")"
    return rng.choice(_DIGITS)


def expressions(n: int, *, max_length: int = 24, min_length: int = 3, seed: int = 0) -> list[str]:
    r"""``n`` random arithmetic expressions over single digits with ``+ - *`` and nested parentheses.

    The grammar (checked by :func:`is_valid_expression`)::

        expr   := term (("+" | "-") term)*
        term   := factor ("*" factor)*
        factor := digit | "(" expr ")"

    Expressions are drawn top-down (1 to 3 terms, 1 to 3 factors, a factor is a parenthesised
    sub-expression with probability 0.45 up to depth 4) and kept when ``min_length <= len <= max_length``.
    With the defaults more than half contain parentheses and a quarter nest them two or more deep, so a
    generator must learn to balance them: validity is a real test. Lengths are odd (the grammar's
    sentences are), and short ones are the most frequent. Draws are reproducible for a given ``seed``.

    Args:
        n: number of expressions.
        max_length: longest expression in characters.
        min_length: shortest expression in characters.
        seed: seed of the private random stream.

    Returns:
        ``n`` strings (duplicates possible, as in any sample).

    Example:
        >>> expressions(3, seed=1)
        ['(2+5*(2*2+9*8))*3+0', '((9*(4*(4))))', '(0*1+4+((8)-8*0))*7+2']
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_length < 1 or min_length > max_length:
        raise ValueError(
            f"need 1 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}"
        )
    rng = random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * (n + 10):
            raise ValueError(
                f"could not draw expressions with {min_length} <= length <= {max_length}; widen the range"
            )
        e = _gen_expr(rng, 0, 4)
        if min_length <= len(e) <= max_length:
            out.append(e)
    return out


def is_valid_expression(s: str) -> bool:
    """Whether ``s`` is a sentence of the grammar of :func:`expressions` (a strict parser, no ``eval``).

    Numbers are single digits, so ``"12"`` is not valid; there are no unary signs, no spaces and no
    implicit multiplication.

    Example:
        >>> [is_valid_expression(s) for s in ["(1+2)*3", "((4))", "1+", "(1", "12", "-1", "2(3)", ""]]
        [True, True, False, False, False, False, False, False]
    """
    if not isinstance(s, str):
        return False
    pos = 0

    def expr() -> bool:
        nonlocal pos
        if not term():
            return False
        while pos < len(s) and s[pos] in "+-":
            pos += 1
            if not term():
                return False
        return True

    def term() -> bool:
        nonlocal pos
        if not factor():
            return False
        while pos < len(s) and s[pos] == "*":
            pos += 1
            if not factor():
                return False
        return True

    def factor() -> bool:
        nonlocal pos
        if pos >= len(s):
            return False
        c = s[pos]
        if c in _DIGITS:
            pos += 1
            return True
        if c == "(":
            pos += 1
            if not expr() or pos >= len(s) or s[pos] != ")":
                return False
            pos += 1
            return True
        return False

    if len(s) > 10_000:  # the recursion depth grows with nesting; such strings are never samples
        return False
    return expr() and pos == len(s)


# ----------------------------------------------------------------------------------------------------
# Embedded grammar: balanced brackets (Dyck words over two bracket pairs)
# ----------------------------------------------------------------------------------------------------

_PAIRS = {"(": ")", "[": "]"}


def bracket_words(n: int, *, max_length: int = 24, seed: int = 0) -> list[str]:
    """``n`` random balanced words over ``()`` and ``[]`` of even length ``2..max_length``.

    Each word is a random walk of ``length / 2`` opens and closes that never goes below zero and ends at
    zero, with a random bracket type per open; lengths are uniform over the even numbers.

    Example:
        >>> bracket_words(3, max_length=8, seed=0)
        ['[[[]]]()', '[()]', '(())[]']
        >>> all(is_balanced(w) for w in bracket_words(200, seed=3))
        True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (the shortest word is '()'), got {max_length}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        half = rng.randint(1, max_length // 2)
        stack: list[str] = []
        word = []
        opens_left = half
        while opens_left or stack:
            # open when nothing is open, else with probability proportional to what is left to open
            if opens_left and (not stack or rng.random() < opens_left / (opens_left + len(stack))):
                b = rng.choice("([")
                stack.append(b)
                word.append(b)
                opens_left -= 1
            else:
                word.append(_PAIRS[stack.pop()])
        out.append("".join(word))
    return out


def is_balanced(s: str) -> bool:
    """Whether ``s`` is a non-empty word of correctly nested ``()`` and ``[]`` and nothing else.

    Example:
        >>> [is_balanced(s) for s in ["([])", "()[]", "([)]", "(()", "", "(a)"]]
        [True, True, False, False, False, False]
    """
    if not isinstance(s, str) or not s:
        return False
    stack = []
    for c in s:
        if c in _PAIRS:
            stack.append(_PAIRS[c])
        elif c in ")]":
            if not stack or stack.pop() != c:
                return False
        else:
            return False
    return not stack


# ----------------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------------

#: File types :func:`load_sequences` reads.
SEQUENCE_EXTENSIONS = (".txt", ".smi")


def load_sequences(path: str | os.PathLike) -> list[str]:
    """Sequences from a text file: ``.txt`` one a line, ``.smi`` the first column of each line.

    - ``.txt``: each line, stripped of surrounding whitespace, is one sequence (inner spaces are kept:
      they are tokens); blank lines are skipped.
    - ``.smi``: the first whitespace-separated field of each line (the SMILES; a name or id may follow);
      a first line whose first field is ``smiles`` (any case) is a header and skipped; blank lines
      are skipped.

    Args:
        path: the file.

    Returns:
        The sequences in file order.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "mols.smi"
        ...     _ = p.write_text("SMILES name\\nCCO ethanol\\n\\nc1ccccc1 benzene\\n")
        ...     load_sequences(p)
        ['CCO', 'c1ccccc1']
    """
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in SEQUENCE_EXTENSIONS:
        raise ValueError(
            f"cannot read sequences from {p.name!r}: unknown extension {p.suffix!r}"
            f"{suggest(ext, SEQUENCE_EXTENSIONS)}; use .txt (one sequence a line) or .smi "
            "(SMILES in the first column)"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found" + (" (it is a folder)" if p.is_dir() else "") + "; pass the path of an existing "
            f"{ext} file"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text ({e}); save it as UTF-8 with one sequence a line") from None
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if ext == ".smi":
            field = line.split()[0]
            if not out and lineno == _first_nonblank(text) and field.lower() == "smiles":
                continue
            out.append(field)
        else:
            out.append(line)
    if not out:
        raise ValueError(
            f"{p} holds no sequences (it is empty or only blank lines); write one sequence a line"
        )
    return out


def _first_nonblank(text: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return i
    return 0
