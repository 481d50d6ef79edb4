"""Cues that a number word in web text counts nothing visible, beyond its own few words of context.

`countclip.numbers` reads a number word's immediate context (units, ranges, numbering, glued
compounds); these cues read what it counts and where it stands, with the vocabularies of
`countclip.vocabulary` and lemminflect's parts of speech. A number word is not a count when:

- it makes a compound modifier of one thing, unhyphenated: it is followed by one of
  `vocabulary.modifiers()` or a noun + "ed", and no plural noun after that ("two tone sweater", "two
  piece romper", "Six Pack", "six eyed spider"); "two piece swimsuits" or "four pack of socks" still
  count (CountBench counts them), and so does any other singular ("two door garage");
- what it counts names nothing a picture shows ("five reasons", "four regions", "the two main
  ingredients": `vocabulary.is_not_visible`);
- it is part of a title or name: "The Three Musketeers" (capitalised "The", number and next word),
  or a capitalised name or numbering ending in it ("Division Two", "Fab Four", "Rainbow Six,");
- it states a capacity: "for two" with nothing counted after it, or "for two people" / "guests".

Each cue is written for the Title Case and lower case forms web captions take; an ALL-CAPS number
word ("TWO") is never read as a title.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from countclip import vocabulary

Tokens = tuple[tuple[str, str], ...]  # (separator before, lower-cased word) after the number word

_CAPACITY_NOUNS = frozenset("people persons guests adults".split())  # "for two people": a capacity
_STOP_BEFORE = frozenset(
    "of for on at in to by with from and or the a an my his her our their its your all top first last next".split()
)
_PREVIOUS_WORD_RE = re.compile(r"([A-Za-z][\w'’]*) $")  # the word right before, one plain space between


def not_a_visible_count(caption: str, start: int, end: int, after: Tokens, phrase: list[str],
                        looks_plural: Callable[[str], bool]) -> bool:
    """Whether the number word caption[start:end] counts nothing visible (see the module doc).

    after: the words after it as `numbers` tokenises them; phrase: the noun phrase it counts.
    """
    previous = _PREVIOUS_WORD_RE.search(caption[max(0, start - 40):start])
    previous = previous.group(1) if previous else ""
    bare = not after or bool(after[0][0].strip())  # nothing but punctuation follows
    return (
        _compound_modifier(after, phrase, looks_plural)
        or bool(phrase and vocabulary.is_not_visible(phrase[-1]))
        or _in_a_title(caption, start, end, previous, bare)
        or (previous.lower() == "for" and (bare or (phrase and phrase[-1] in _CAPACITY_NOUNS)))
    )


def _compound_modifier(after: Tokens, phrase: list[str], looks_plural: Callable[[str], bool]) -> bool:
    """"two tone sweater", "Six Eyed Sand Spider": a modifier noun (or noun + "ed") and no plural after it."""
    if not after or not after[0][0].isspace():
        return False
    word = after[0][1]
    listed = word in vocabulary.modifiers()
    if not listed and not (_noun_with_ed(word) and len(after) > 1 and after[1][0].isspace()):
        return False  # "six enamelled, gilt silver spoons": a list of adjectives
    if len(after) > 1 and after[1] == (" ", "of"):
        return False  # "four pack of socks": CountBench counts the socks
    return not any(looks_plural(w) for w in phrase)  # "three color balloons" counts balloons


@functools.lru_cache(maxsize=4096)
def _noun_with_ed(word: str) -> bool:
    """"eyed", "legged", "sided", "tiered": a noun made an adjective (lemminflect knows the noun)."""
    if len(word) < 5 or not word.endswith("ed") or not word.isalpha():
        return False
    from lemminflect import getAllLemmas

    stems = {word[:-1], word[:-2]} | ({word[:-3]} if word[-3] == word[-4] else set())
    return any("NOUN" in getAllLemmas(stem) for stem in stems)


def _in_a_title(caption: str, start: int, end: int, previous: str, bare: bool) -> bool:
    if not caption[start:end].istitle():  # "Three", not "three" or "THREE"
        return False
    if previous == "The":  # "The Three Musketeers", "The Four Seasons Hotel"
        following = caption[end:end + 2]
        return len(following) == 2 and following[0] == " " and following[1].isupper()
    # "Division Two", "Fab Four": a capitalised word, then the number word, then nothing but punctuation
    return bare and previous[:1].isupper() and previous.lower() not in _STOP_BEFORE
