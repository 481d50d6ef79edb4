"""Cues that a number word in web text counts nothing visible, beyond its own few words of context.

`countclip.numbers` reads a number word's immediate context (units, ranges, numbering, glued
compounds); these cues read what it counts and where it stands, with the vocabularies of
`countclip.vocabulary` and lemminflect's parts of speech. A number word is not a count when:

- it makes a compound modifier of one thing, unhyphenated: one of `vocabulary.modifiers()` follows
  it and no plural, "of" or "from" right after that ("two tone sweater", "two piece romper", "Two
  Tone"; "three color balloons" and "four pack of socks" count, as CountBench counts them); or a
  visible thing's noun + "ed" with no plural after it ("six eyed spider"; "two horned cows" count);
  or, in Title Case only, any singular noun with more words and no plural ("Two Queen Deluxe Cabin").
  In lower case any other singular stays a count ("two door garage", CountBench's "nine vector image");
- what it counts names nothing a picture shows ("five reasons", "four regions", "two starts":
  `vocabulary.is_not_visible`);
- it is part of a title or name, the number word capitalised ("Three"): inside a short quoted
  title ('"Three Primary Colors"'); after "the" and before a capitalised word ("The Three
  Musketeers", "Romance of the Three Kingdoms"), unless the caption names a picture, whose title
  says what it shows ("The Two Fridas Framed Print"); "Five of Cups"; a capitalised name ending in
  it ("Division Two", "Fab Four,"); in a credit line ("Tony Farlow/Four Seam Images"); in the
  title of a work "by" a named author, in a caption that names no picture ("Two Little Girls in
  Blue by Mary Higgins Clark"; "Three Boys in a Dory Poster by Winslow Homer" counts); or it carries
  a trademark sign ("TWO™");
- it starts a mixed number ("Two 1/2 inch snaps"), or what it names is a measure or a version
  ("Burton Seven 154cm", "Seven v8"), a streak ("four consecutive Super Bowls") or an idiom ("two of
  a kind");
- the caption is a film, book, album or app listing ("720p BRRip", "Full APK", "Paperback", a
  series number or an edition in brackets: "(Lusty, Texas #9)", "(03 Edition)") and the number word
  is capitalised: it is in the title;
- it is a bare number closing a name or a numbered work, lower case too ("the art life two", from a
  slug); not after a plural, "of", "for" and the like ("set of two", "puppies two");
- it states a capacity, a yield or a split ("dinner for two", "for two people", "shoots for two
  during", "sleeps four", "serves six", "makes two small glasses", "in two"), or counts people the
  picture does not show: victims ("killed two teens", "shot her four children") and people sought
  ("looking for two school nurses", "hiring three").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from countclip import vocabulary

Tokens = tuple[tuple[str, str], ...]  # (separator before, lower-cased word) after the number word

_CAPACITY_NOUNS = frozenset("people persons guests adults".split())  # "for two people": a capacity
_STOP_BEFORE = frozenset(
    "of for on at in to by with from and or the a an my his her our their its your all top first last next "
    "these those both only just other another we us you them".split()
)
_VICTIMS_OF = frozenset("killed killing kills injured injuring injures wounded wounding murdered murdering".split())
_SHOT = frozenset("shot stabbed killed murdered".split())  # "shot her four children": before a possessive
_POSSESSIVE = frozenset("her his their its our my your".split())
_YIELDS = frozenset("serves serving yields makes sleeps seats accommodates feeds".split())  # "serves four"
_STREAK = frozenset("consecutive successive".split())  # "four consecutive Super Bowls": a record
# A measure or a version as the head: "154cm", "10.5mm", "v8", "v2.0" ("two 5mm beads" counts beads)
_MEASURE_RE = re.compile(r"\d+(?:[.,]\d+)?[a-z]{1,3}|v\d[\w.]*")
# A film, book, album or app listing: release formats, editions, a series number "(Lusty, Texas #9)"
_WORK_RE = re.compile(
    r"\b(?:\d{3,4}p|[BH]D-?Rip|BRRip|DVDRip|WEB-?Rip|WEB-DL|Blu-?ray|x26[45]|HEVC|APK|MP3|FLAC|e-?book|EPUB|"
    r"Kindle|Paperback|Hardcover|Hardback|Audiobook|Soundtrack|DVD)\b|\([^()]*(?:#\s?\d{1,3}|\bEdition)\)",
    re.IGNORECASE,
)
_SEEKING = frozenset("seeking hiring recruiting wanted".split())  # "hiring three drivers"
_LOOKING = (["looking"], ["searching"], ["search"])  # "is looking for two school nurses"
_CUES_BEFORE = frozenset({"for", "in"}) | _SEEKING | _VICTIMS_OF | _YIELDS | _POSSESSIVE  # read as the word before
_BY_NAME_RE = re.compile(r"(?: by|By:) [A-Z][a-z]+ [A-Z][a-z]+")  # "by Mary Higgins Clark"; not "Standing By"
_PICTURE_RE = re.compile(
    r"\b(?:prints?|posters?|paintings?|painted|canvas|photos?|photograph\w*|pictures?|art|artwork|drawings?|"
    r"illustrations?|sculptures?|murals?|etchings?|lithographs?|watercolou?rs?|images?|stock|vector|cover)\b",
    re.IGNORECASE,
)


def not_a_visible_count(caption: str, start: int, end: int, previous: str, after: Tokens, phrase: Sequence[str],
                        looks_plural: Callable[[str], bool]) -> bool:
    """Whether the number word caption[start:end] counts nothing visible (see the module doc).

    previous: the word right before it, as written, when one space separates them (else "");
    after: the words after it as `numbers` tokenises them; phrase: the noun phrase it counts.
    """
    if len(after) > 1 and after[0][1].isdigit() and after[1][0] == "/":
        return True  # "Two 1/2 inch": a mixed number, a measure
    number = caption[start:end]
    if (_compound_modifier(after, phrase, looks_plural)
            or bool(phrase and vocabulary.is_not_visible(phrase[-1]))
            or _measure_of_one(after, phrase, looks_plural)
            or _not_a_thing_after(after)
            or caption[end:end + 1] in ("™", "®")):  # "Army of TWO™": a brand
        return True
    before = previous.lower()
    bare = not after or bool(after[0][0].strip()) or after[0][1].isdigit()  # "for two 2": a digit note
    if before and (before in _CUES_BEFORE or not after) and (
        (before == "for" and (not phrase or phrase[-1] in _CAPACITY_NOUNS))  # "Dinner for two?"
        or (before == "in" and bare)  # "cuts the village in two"
        or before in _SEEKING or before in _VICTIMS_OF or before in _YIELDS  # "hiring three"; "serves four"
        or (before == "for" and caption[max(0, start - 24):start - 4].lower().split()[-1:] in _LOOKING)
        or (before in _POSSESSIVE and _shot_before(caption, start))  # "shot her four"
        or (not after and before not in _STOP_BEFORE and not looks_plural(before) and _thing_word(before))
    ):  # the last: "the art life two" closing a name (Title Case: `_in_a_title`)
        return True
    if not (number[0].isupper() and number[1:].islower() or number.isupper()):
        return False  # the rest are cues of names, titles and Title Case
    return (
        _title_case_compound(number, after, phrase, looks_plural)
        or (number.istitle() and (
            caption[start - 1:start] == "/"  # "(Tony Farlow/Four Seam Images)"
            or _in_a_title(caption, start, end, previous, bare)
            or _a_work_by(caption, end)
            or bool(_WORK_RE.search(caption))))  # "Two Mules for Sister Sara (1970) 720p BRRip"
    )


def _shot_before(caption: str, start: int) -> bool:
    """The word two before the number word is one of _SHOT ("shot her four children")."""
    two_before = caption[max(0, start - 24):start].lower().split()[-2:]
    return len(two_before) == 2 and two_before[0] in _SHOT


def _measure_of_one(after: Tokens, phrase: Sequence[str], looks_plural: Callable[[str], bool]) -> bool:
    """"Burton Seven 154cm Snowboard", "Seven v8": a measure or a version, and no plural after it
    ("two 5mm beads" counts beads)."""
    first = after[0][1][:1] if after else ""  # every _MEASURE_RE match starts with a digit or "v"
    return ((first.isdigit() or first == "v") and after[0][0].isspace() and bool(_MEASURE_RE.fullmatch(after[0][1]))
            and not any(looks_plural(w) for w in phrase))


def _not_a_thing_after(after: Tokens) -> bool:
    """"four consecutive Super Bowls", "two of a kind"."""
    if not after or not after[0][0].isspace():
        return False
    return after[0][1] in _STREAK or (after[0][1] == "of" and [w for _, w in after] == ["of", "a", "kind"])


def _a_work_by(caption: str, end: int) -> bool:
    """"Two Little Girls in Blue by Mary Higgins Clark": a capitalised number in the title of a work
    by someone; unless the caption names a picture ("... Metal Print by Vincent Van Gogh", "Poster by"),
    whose title describes what it shows."""
    by = _BY_NAME_RE.search(caption, end)
    return bool(by) and not _PICTURE_RE.search(caption)


def _compound_modifier(after: Tokens, phrase: Sequence[str], looks_plural: Callable[[str], bool]) -> bool:
    """"two tone sweater", "Six Eyed Sand Spider": a modifier noun, or a thing's noun + "ed"."""
    if not after or not after[0][0].isspace():
        return False
    word, following = after[0][1], after[1] if len(after) > 1 else ("", "")
    if word in vocabulary.modifiers():  # unless a plural, "of" or "from" follows: "three pack of socks"
        return not (following[0].isspace() and (following[1] in ("of", "from") or looks_plural(following[1])))
    if _noun_with_ed(word) and (following[0].isspace() or following == ("", "")):  # not "six enamelled, gilt"
        return not any(looks_plural(w) for w in phrase)  # "two horned cows" counts cows
    return False


def _title_case_compound(number: str, after: Tokens, phrase: Sequence[str], looks_plural: Callable[[str], bool]) -> bool:
    """"Two Queen Deluxe Cabin", "Three Horse Bedding Set": in a Title Case name (number "Two" or
    "TWO") a number, a singular noun and more words with no plural among them describe one thing. (In
    lower case the same shape is too often CountBench's count: "nine vector image", "two door garage".)"""
    if not after or not after[0][0].isspace():
        return False
    # More words: the phrase's, or two after it that it ended before at an -ing word ("Three Horse
    # Bedding Set"; not "Two youth speaking at ...")
    more = [w for sep, w in after[1:] if sep.isspace() and w.isalpha() and w not in _STOP_BEFORE]
    if len(phrase) < 2 and len(more) < 2:
        return False
    plural = [looks_plural(w) or (w.endswith(("is", "us")) and vocabulary.singular(w) != w) for w in (*phrase, *more)]
    return _thing_word(after[0][1]) and not any(plural)  # "Two yogis after yoga practice" counts


@functools.lru_cache(maxsize=4096)
def _thing_word(word: str) -> bool:
    """A noun, not an adjective: lemminflect knows it as a noun, or a vocabulary names it ("pan", which
    lemminflect knows only as a verb); never a word lemminflect knows as an adjective ("young", "red")."""
    if not word.isalpha():
        return False
    from lemminflect import getAllLemmas

    parts = getAllLemmas(word)
    return ("NOUN" in parts or vocabulary.is_visible(word)) and "ADJ" not in parts and "ADP" not in parts


@functools.lru_cache(maxsize=4096)
def _noun_with_ed(word: str) -> bool:
    """"eyed", "legged", "tiered": a visible thing's noun or a modifier made an adjective; not a
    participle such as "isolated" (lemminflect cannot tell them apart: both read as verbs)."""
    if len(word) < 4 or not word.endswith("ed") or not word.isalpha():
        return False
    return any(stem in vocabulary.modifiers() or vocabulary.is_visible(stem) for stem in _stems(word))


def _stems(word: str) -> set[str]:
    """What a noun + "ed" adjective may be made of: "toned" -> tone, "legged" -> leg, "horned" -> horn."""
    return {word[:-1], word[:-2]} | ({word[:-3]} if word[-3] == word[-4] else set())


def _in_a_title(caption: str, start: int, end: int, previous: str, bare: bool) -> bool:
    """Quoted titles, "The Three ...", "Five of Cups", "Division Two" (the number word is Title case)."""
    following = caption[end:end + 4]
    if _quoted(caption, start) or (previous in ("The", "the") and following[:1] == " " and following[1:2].isupper()):
        # 'OK Go, "Three Primary Colors"', "The Three Musketeers", "Romance of the Three Kingdoms"; but
        # a picture's title says what it shows ("The Two Fridas Framed Print")
        return not _PICTURE_RE.search(caption)
    if following[:4] == " of " and caption[end + 4:end + 5].isupper():  # "Five of Cups Tarot Card"
        return True
    # "Division Two", "Fab Four": a capitalised word, then the number word, then nothing but punctuation
    return bare and previous[:1].isupper() and previous.lower() not in _STOP_BEFORE


def _quoted(caption: str, start: int) -> bool:
    """Whether caption[start] lies inside a short "straight" or “curly” double-quoted title (at most
    eight words). A caption exported CSV-style ('"A set of six ""Merryman"" plates"') is read unescaped."""
    before, after = caption[:start], caption[start:]
    if len(caption) > 2 and caption[0] == caption[-1] == '"' and '""' in caption:
        before, after = before[1:].replace('""', '"'), after[:-1].replace('""', '"')
    if before.count('"') % 2 == 1:
        opened, closing = before.rfind('"'), after.find('"')
    elif before.rfind("“") > before.rfind("”"):
        opened, closing = before.rfind("“"), after.find("”")
    else:
        return False
    return closing >= 0 and len((before[opened + 1:] + after[:closing]).split()) <= 8
