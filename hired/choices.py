"""Constrained answers: the generated text is exactly one of a row's choices (yes/no, A/B/C/D).

Each choice becomes the token sequences that spell it as the model would continue a prompt: at
the start of a word (SentencePiece's ``▁yes``, byte-level BPE's ``Ġyes``) and glued to what
precedes it (``yes`` after a newline, as ChatML templates end), each kept only if it decodes back
to the choice. The sequences form a prefix trie; at every step a row may take only the tokens that
continue its trie node and can still finish a choice within ``max_new_tokens``, and EOS once a
choice is complete. A choice that is a prefix of another (``no``, ``no way``) ends where the model
puts EOS (or where the token budget runs out); a complete choice with no longer one is forced to
EOS. The model's own probabilities decide among what is allowed, so greedy decoding picks the
choice it finds likeliest token by token.

A row whose choices cannot be spelled raises :class:`ChoiceError` naming the row and the choice,
which the pipeline turns into that row's error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache


class ChoiceError(ValueError):
    """A row's choices cannot constrain decoding (empty, untokenizable, or longer than the budget)."""

    def __init__(self, message: str, row: int | None = None, choice: str | None = None):
        self.row, self.choice, self.reason = row, choice, message
        super().__init__(message if row is None else f"row {row}: {message}")

    def for_row(self, row: int) -> "ChoiceError":
        return ChoiceError(self.reason, row=row, choice=self.choice)


@dataclass(frozen=True)
class ChoiceTrie:
    """The token sequences of a set of choices as a prefix trie; node 0 is the root.

    ``edges[n]``: ``{token: child}``; ``terminal[n]``: a choice is complete at node ``n``;
    ``to_finish[n]``: the fewest further tokens that complete a choice from ``n`` (0 if terminal).
    """

    choices: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    edges: tuple[dict[int, int], ...]
    terminal: tuple[bool, ...]
    to_finish: tuple[int, ...]

    @property
    def shortest(self) -> int:
        """Tokens the shortest spelling of any choice needs."""
        return self.to_finish[0]


def spellings(tokenizer, choice: str) -> list[tuple[int, ...]]:
    """The token sequences that spell ``choice`` as a continuation, each decoding back to it."""
    found = []
    candidates = [_encode(tokenizer, choice), _encode(tokenizer, " " + choice)]
    anchor = _encode(tokenizer, "\n")
    glued = _encode(tokenizer, "\n" + choice)
    if glued[: len(anchor)] == anchor:
        candidates.append(glued[len(anchor) :])
    unknown = getattr(tokenizer, "unk_token_id", None)
    for ids in candidates:
        if not ids or (unknown is not None and unknown in ids):
            continue
        if tokenizer.decode(list(ids), skip_special_tokens=True).strip() == choice and ids not in found:
            found.append(ids)
    return found


def build_trie(tokenizer, choices: Sequence[str], max_new_tokens: int | None = None) -> ChoiceTrie:
    """The trie of ``choices`` for ``tokenizer``; raises :class:`ChoiceError` (without a row) if one cannot be
    spelled or, given ``max_new_tokens``, none fits in it. Cached per tokenizer and choices."""
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise ChoiceError(f"choices must be a list of strings, got {choices!r}")
    key = tuple(choices)
    for c in key:
        if not isinstance(c, str):
            raise ChoiceError(f"choices must be strings, got {c!r}", choice=c)
    trie = _cached_trie(_TokenizerKey(tokenizer), key)
    if max_new_tokens is not None and trie.shortest > max_new_tokens:
        raise ChoiceError(
            f"the shortest choice needs {trie.shortest} tokens but max_new_tokens is {max_new_tokens}"
        )
    return trie


class _TokenizerKey:
    """Hashes a tokenizer by identity, so the trie cache never holds two tokenizers' tries under one key."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __hash__(self) -> int:
        return id(self.tokenizer)

    def __eq__(self, other) -> bool:
        return isinstance(other, _TokenizerKey) and other.tokenizer is self.tokenizer


@lru_cache(maxsize=256)
def _cached_trie(key: _TokenizerKey, choices: tuple[str, ...]) -> ChoiceTrie:
    tokenizer = key.tokenizer
    if not choices:
        raise ChoiceError("choices is empty: give at least one allowed answer")
    unique = tuple(dict.fromkeys(choices))
    sequences = []
    for choice in unique:
        if not choice.strip():
            raise ChoiceError("a choice is empty; every choice must have text", choice=choice)
        if choice != choice.strip():
            raise ChoiceError(
                f"choice {choice!r} has leading or trailing whitespace; the generated text is stripped, so it could "
                "never match: write it without", choice=choice,
            )
        spelled = spellings(tokenizer, choice)
        if not spelled:
            raise ChoiceError(
                f"choice {choice!r} cannot be tokenized by this tokenizer (unknown tokens, or its tokens do not "
                "decode back to it)", choice=choice,
            )
        sequences.extend(s for s in spelled if s not in sequences)
    edges: list[dict[int, int]] = [{}]
    terminal = [False]
    for seq in sequences:
        node = 0
        for token in seq:
            if token not in edges[node]:
                edges[node][token] = len(edges)
                edges.append({})
                terminal.append(False)
            node = edges[node][token]
        terminal[node] = True
    to_finish = [0] * len(edges)
    for node in reversed(range(len(edges))):  # children are numbered after their parents
        to_finish[node] = 0 if terminal[node] else 1 + min(to_finish[c] for c in edges[node].values())
    return ChoiceTrie(unique, tuple(sequences), tuple(edges), tuple(terminal), tuple(to_finish))


def per_row(choices, rows: int, tokenizer, max_new_tokens: int) -> list[ChoiceTrie | None]:
    """One trie (or ``None``: free text) per row from per-call choices (a list of strings), per-row
    choices (a list, one list of strings, a :class:`ChoiceTrie` or ``None`` per row), or ``None``.
    A row's bad choices raise :class:`ChoiceError` with that row."""
    if choices is None:
        return [None] * rows
    if isinstance(choices, Sequence) and not isinstance(choices, str) and not choices:
        build_trie(tokenizer, choices)  # raises: an empty list of choices
    if isinstance(choices, ChoiceTrie) or (isinstance(choices, Sequence) and choices and isinstance(choices[0], str)):
        trie = choices if isinstance(choices, ChoiceTrie) else build_trie(tokenizer, choices, max_new_tokens)
        return [trie] * rows
    choices = list(choices)
    if len(choices) != rows:
        raise ValueError(f"got {len(choices)} per-row choices for {rows} rows (per-call choices are a list of strings)")
    out = []
    for row, c in enumerate(choices):
        try:
            if c is None or isinstance(c, ChoiceTrie):
                if c is not None and c.shortest > max_new_tokens:
                    raise ChoiceError(f"the shortest choice needs {c.shortest} tokens but max_new_tokens is {max_new_tokens}")
                out.append(c)
            else:
                out.append(build_trie(tokenizer, c, max_new_tokens))
        except ChoiceError as error:
            raise error.for_row(row) from None
    return out


def _encode(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))
