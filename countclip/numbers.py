"""Number words in captions: which count a caption states, where, of what, and its rewrites.

The paper (Paiss et al., ICCV 2023) counts with the spelled words two..ten. A caption states a
count when one of those words, as a whole word (any case), counts visible things:
"three red circles", "set of eight", "All seven would ...", "the ten best headsets" (Top Ten
counts too: CountBench labels it so).

An occurrence is *not* a count when its context says it is something else:
- glued: joined by a hyphen or dash ("two-way", "three-year-old", "twenty-two", "two-three"; not
  "set-of-three"), followed by "'s" ("two's company") or wrapped as "(two)" (a list item's note;
  not after a plural: "Yorkshire Terriers (three)"). A URL slug ("Two-tiger-cubs-playing", only
  words and single hyphens) is read with its hyphens as spaces;
- part of a bigger number or a sequence: a number word next to it ("two hundred", "twenty two",
  "ten thirty", "two dozen", "three quarter"), "hundred and two";
- a range, ratio or approximation: "two or three", "two to 3", "2 - three", "five past two",
  "one in ten", "nine out of ten", "two or more", "about ten", "at least two", "up to ten";
- a unit, a duration, a period or money after it: "two meters", "three inches", "ten percent",
  "three days", "two weeks", "four seasons", "ten dollars", "two cents", "three pounds" (weight
  or money, never a count), "three times", "nine lives"; clock times ("three o'clock", "ten pm");
  fractions ("two thirds", "three quarters of", "two and a half", "two point five");
- numbering or a fixed expression before it: "episode two", "season three", "part two",
  "chapter ten", "day three", "No. 2", "Mark Two", "World War Two", "take two", "high five",
  "cloud nine"; ages ("aged three", "turns ten"); frequency and negation ("every two", "no two");
- a compound modifier of one thing: "a three piece suit", "a two seater" ("a/an" + number word
  whose phrase reaches no plural noun; "a nine different poses" still counts);
- a bare number (nothing follows but punctuation) after "at", "is", "until", ... (times, ages:
  "meet at ten.", "she is two") or after a comma (apposition: "Hattie, eight,"; not after a plural).
Coins are things: "ten quarters", "two pennies" count. "one of the two boys" counts two (both
are pictured). Numbering words take no full stop ("A sunny day. Two dogs"); abbreviations may ("No. 2").
Past that context, `countclip.caption_cues` reads what is counted and where it stands (its doc has
the list): compound modifiers ("two tone sweater"), nouns naming nothing visible ("five reasons"),
titles and names ("The Three Musketeers", "Division Two"), capacities ("dinner for two"), people
not pictured ("killed two teens"). Titles it cannot tell ("Seven Samurai") reach the detector check.

What is counted: the noun phrase is read after the first counted word, up to punctuation, a stop
word (preposition, conjunction, determiner, auxiliary, pronoun) or a digit, and ends at its first
plural-looking word, at most four words plus "and" between modifiers ("black and white photos");
the noun is its last word, a plain guess for mapping to detector classes later.

Multi-count rule: a training pair and its counterfactuals need one unambiguous count, so a caption
whose counted occurrences state different counts ("two dogs and three cats") has none (None). The
same count repeated ("three dogs ... the three dogs") is one count; every occurrence is a span and
every one is rewritten in the variants, so no variant contradicts itself.

Input: a str, or None. None, "" and whitespace give None; anything else (bytes, numbers, NaN,
pandas NA) raises TypeError. `countclip.data.captions.parse_captions`, the vectorised form, is
lenient: None, NaN, pandas NA and bytes that are not UTF-8 become null rows, never an exception.
Spans are str (code point) offsets.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from countclip.caption_cues import not_a_visible_count

NUMBER_WORDS: dict[str, int] = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
COUNTS = tuple(range(2, 11))
WORD_FOR_COUNT: dict[int, str] = {count: word for word, count in NUMBER_WORDS.items()}


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.upper()}]" for c in word)


def _number_word_pattern() -> str:
    """two|three|...|ten in any ASCII case, grouped by first letter ([tT](?:wo|hree|en)|...),
    so the regex engine tries one branch per letter instead of nine."""
    rests: dict[str, list[str]] = {}
    for word in NUMBER_WORDS:
        rests.setdefault(word[0], []).append(word[1:])
    return "|".join(f"{_any_case(first)}(?:{'|'.join(map(_any_case, tails))})" for first, tails in rests.items())


# ASCII-only case-insensitivity ([tT][wW][oO]) and Unicode word boundaries: every match is also
# a match of the RE2 prefilter (ASCII \b, ignore_case), so the vectorised form sees a superset.
# The leading look-ahead on the first letters lets the engine skip other positions quickly.
_NUMBER_RE = re.compile(r"(?=[tTfFsSeEnN])(?<!\w)(?:" + _number_word_pattern() + r")(?!\w)")
NUMBER_WORD_RE2 = r"\b(?:" + "|".join(NUMBER_WORDS) + r")\b"
# The last two words before a number word, read on the reversed left context: a word,
# \w+(?:['’]\w+)*, reads the same reversed, so one match replaces scanning every word.
_LAST_WORDS_REVERSED_RE = re.compile(r"(\W*)(\w+(?:['’]\w+)*)(?:\W*(\w+(?:['’]\w+)*))?")
_NEXT_TOKEN_RE = re.compile(r"(\W*)(\w+(?:[-'’]\w+)*)")  # (separator, word), "all-star" one word
_DIGIT_NOTE_RE = re.compile(r"\s*\(?\d+\)?(?=\s|$)")  # "five 5 holiday", "ten (10) coins"
_NUMBERING_SEP_RE = re.compile(r"\s+#?\s*")  # "part two", "episode #2"
_ABBREV_SEP_RE = re.compile(r"\.?\s*#?\s*")  # "No. 2", "vol.2"
_RANGE_SEP_RE = re.compile(r"\s*[-‐‑–—/~]\s*")  # "2 - three", "two/three"
_AFTER_RE = re.compile(
    r"\s*(?:o['’]?\s?clock\b|[ap]\.\s?m\b|[ap]m\b|%|per\s?cent\b|percent\b"
    r"|in\s+the\s+(?:morning|afternoon|evening)\b|at\s+night\b"
    r"|and\s+(?:an?\s+)?half\b|point\s+\w)",
    re.IGNORECASE,
)
# Every character that can follow the spaces in an _AFTER_RE match, where it is ASCII: most
# number words are followed by none of them, and skip the regex.
_AFTER_START = frozenset("oapiOAPI%")
_SLUG_RE = re.compile(r"[^\W_]+(?:-[^\W_]+)+")  # words joined by single hyphens, nothing else
_WINDOW = 64  # characters of context read on each side of a number word
_DASHES = frozenset("-‐‑–—")
_APOSTROPHES = frozenset("'’")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NUMBERISH = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty "
    "ninety hundred hundreds thousand thousands million millions billion billions trillion dozen "
    "dozens half quarter"
)
_CONNECTORS = _words("or to and by x through thru till til past in of point")
_APPROX_TAIL = _words("more less fewer few so many")  # "two or more", "ten or so"
_UNITS = _words(
    # durations and periods
    "second seconds sec secs minute minutes min mins hour hours hr hrs day days night nights "
    "week weeks wk wks fortnight fortnights month months year years yr yrs yo decade decades "
    "century centuries season seasons semester semesters times fold lives "
    # lengths, weights, volumes and other measures
    "meter meters metre metres cm mm km centimeter centimeters centimetre centimetres "
    "millimeter millimeters millimetre millimetres kilometer kilometers kilometre kilometres "
    "inch inches foot feet ft yard yards yd yds mile miles gram grams kg kilo kilos kilogram "
    "kilograms pound pounds lb lbs ounce ounces oz ton tons tonne tonnes liter liters litre "
    "litres ml gallon gallons pint pints quart quarts degree degrees acre acres hectare hectares "
    "mph kph story stories storey storeys carat carats karat karats calorie calories megapixel "
    "megapixels "
    # money amounts (coins such as pennies or quarters are things and still count)
    "dollar dollars buck bucks cent cents euro euros pence quid yen yuan rupee rupees franc "
    "francs peso pesos grand"
)
_FRACTIONS = _words("thirds fourths fifths sixths sevenths eighths ninths tenths")
_NUMBERING_PREV = _words(
    "episode season series chapter part volume book level grade step round number page act "
    "scene stage phase version day week year mark war apollo gen class type size track game "
    "hole channel district figure lesson psalm verse take high cloud lap heat leg"
)
# Abbreviations may be followed by a full stop; full words may not, or "A sunny day. Two dogs"
# would read as numbering.
_NUMBERING_ABBREV = _words("no ep ch pt vol pg lvl num ver mk fig")
_APPROX_PREV = _words("about around approximately approx roughly nearly almost than least most")
_NOT_COUNT_PREV = _words("every aged age ages turns turned turning")  # frequency, ages
_BARE_PREV = _words("at by until till til is was turn")  # "meet at ten.", "she is two"
_ARTICLES = _words("a an")
_PARTITIVE = _words("the these those my his her our their its your")
_PHRASE_STOP = _NUMBERISH | _words(
    "in on at of with for from to by over under near beside behind between into onto inside "
    "outside above below across against along around during without within through like via "
    "and or but nor the a an this that these those is are was were be been being has have had "
    "do does did will would can could should may might must who which whom whose while when "
    "where as than then them they their it its we us our you your he she his her i me my "
    "including featuring containing showing holding wearing having using"
)
# Words some `_excluded_by_before` rule reads before a number word; other words (not digits) pass it
_BEFORE_CUE_WORDS = (_NUMBERISH | _CONNECTORS | _NUMBERING_PREV | _NUMBERING_ABBREV | _APPROX_PREV
                     | _NOT_COUNT_PREV | _ARTICLES)
_JOINER = "and"  # kept between modifiers: "black and white photos"
_IRREGULAR_PLURALS = _words(
    "men women children people feet teeth geese mice dice sheep fish deer moose oxen cattle police moai"
)


@dataclass(frozen=True)
class CaptionCount:
    """The count a caption states and where: every counted occurrence, and what it counts."""

    count: int
    """2..10, the same for every counted occurrence."""
    spans: tuple[tuple[int, int], ...]
    """(start, end) str offsets of every counted occurrence of the number word, in order."""
    noun_phrase: str
    """Lower-cased words after the first counted number word ("red circles"), see module doc."""
    noun: str
    """Head-noun guess, the phrase's last word ("circles"); "" if none follows ("set of ten")."""


def parse_caption(caption: str | None) -> CaptionCount | None:
    """The count a caption states with a spelled number word 2..10, or None (see module doc)."""
    if caption is None:
        return None
    if not isinstance(caption, str):
        kind = type(caption).__name__
        raise TypeError(f"caption must be a str or None, got {kind}: {caption!r:.80}")
    text = _unslugged(caption)
    spans = []
    for match in _NUMBER_RE.finditer(text):
        start, end = match.span()
        if _is_counted(text, start, end):
            spans.append((start, end))
    if not spans:
        return None
    counts = {NUMBER_WORDS[text[s:e].lower()] for s, e in spans}
    if len(counts) != 1:  # several different counts: ambiguous for a counting pair
        return None
    phrase = _noun_phrase(text[spans[0][1]:spans[0][1] + _WINDOW])
    return CaptionCount(counts.pop(), tuple(spans), " ".join(phrase), phrase[-1] if phrase else "")


def _unslugged(caption: str) -> str:
    """A URL slug ("Two-tiger-cubs-playing") with its hyphens read as spaces; same offsets."""
    if caption.count("-") >= 2 and _SLUG_RE.fullmatch(caption):
        return caption.replace("-", " ")
    return caption


def count_from_caption(caption: str | None) -> int | None:
    """The count 2..10 a caption states, or None; `parse_caption(caption).count`."""
    parsed = parse_caption(caption)
    return parsed.count if parsed else None


COUNT_PROMPT = "a photo of {word} {noun}"
"""The caption a count is asked with (predictor, retrieval, served model): the plainest wording."""


def count_prompt(count: int, noun: str) -> str:
    """``COUNT_PROMPT`` for one count: count_prompt(3, "dogs") == "a photo of three dogs"."""
    return COUNT_PROMPT.format(word=WORD_FOR_COUNT[count], noun=noun)


def caption_variants(caption: str, count: int) -> dict[int, str]:
    """The caption rewritten for each count 2..10 (CountBench's nine captions), [count] unchanged.

    Every counted occurrence is rewritten in its own case; uncounted ones ("two-year-old") stay.
    """
    spans = _spans_stating(caption, count)
    return {c: caption if c == count else _rewrite(caption, spans, c) for c in COUNTS}


def counterfactual_caption(caption: str, count: int, rng) -> str:
    """The caption with its count swapped for one of the other eight, drawn uniformly.

    rng: a numpy.random.Generator or a random.Random.
    """
    spans = _spans_stating(caption, count)
    others = [c for c in COUNTS if c != count]
    pick = int(rng.integers(len(others))) if hasattr(rng, "integers") else rng.randrange(len(others))
    return _rewrite(caption, spans, others[pick])


def _spans_stating(caption: str, count: int) -> tuple[tuple[int, int], ...]:
    parsed = parse_caption(caption)
    if parsed is None or parsed.count != count:
        stated = "no count" if parsed is None else f"count {parsed.count}"
        raise ValueError(f"caption states {stated}, not {count}: {caption!r:.120}")
    return parsed.spans


def _rewrite(caption: str, spans: tuple[tuple[int, int], ...], count: int) -> str:
    """Every span replaced by count's word, keeping each original's case (lower, Title, UPPER)."""
    parts, last = [], 0
    for start, end in spans:
        parts += [caption[last:start], _same_case(WORD_FOR_COUNT[count], caption[start:end])]
        last = end
    return "".join(parts) + caption[last:]


def _same_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def _is_counted(caption: str, start: int, end: int) -> bool:
    """Whether the number word at caption[start:end] counts things (the exclusions in the doc)."""
    if _glued(caption, start, end):
        return False
    left = caption[max(0, start - _WINDOW):start]
    last = _LAST_WORDS_REVERSED_RE.match(left[::-1])
    previous = ""  # the word right before, as written, when one space separates them ("The", "for")
    if last:  # the word before, the one before that, and what separates the first from the number
        before_sep, word1, word2 = last.groups("")
        word1, before_sep = word1[::-1], before_sep[::-1]
        w1, w2 = word1.lower(), word2[::-1].lower()
        previous = word1 if before_sep == " " else ""
    else:
        w1, w2, before_sep = "", "", left
    right = caption[end:end + _WINDOW]
    after = _tokens(right)[:3]
    bare = not after or bool(after[0][0].strip())  # only punctuation, or nothing, follows
    return not (
        _excluded_by_before(w1, w2, before_sep, bare, right)
        or _excluded_by_after(after, right)
        or not_a_visible_count(caption, start, end, previous, after, _noun_phrase(right), _looks_plural)
    )


def _glued(caption: str, start: int, end: int) -> bool:
    """Hyphenated/dashed compounds (not "set-of-three"), "two's", and "(two)" notes (not "Terriers (three)")."""
    before = caption[start - 1] if start else ""
    after = caption[end:end + 1]
    if after in _DASHES or (after in _APOSTROPHES and caption[end + 1:end + 2].isalpha()):  # "" is in neither
        return True
    if before not in _DASHES and before != "(":
        return False  # the common case: no rule reads the word before
    before_word = (caption[max(0, start - 24):start - 1].split() or [""])[-1].lower()
    return ((before in _DASHES and not before_word.endswith(("-of", " of")) and before_word != "of")
            or (before == "(" and after == ")" and not _looks_plural(before_word)))


def _is_numberish(word: str) -> bool:
    return word in _NUMBERISH or word.isdigit()


def _excluded_by_before(w1: str, w2: str, sep: str, bare: bool, right: str) -> bool:
    if w1 not in _BEFORE_CUE_WORDS and not w1.isdigit() and not bare:
        return False  # the common case: no rule below reads an ordinary word before the number
    plain = sep.isspace()
    return (
        (plain and w1 in _NUMBERISH)  # "twenty two", "one two three"
        or (plain and w1 in _CONNECTORS and _is_numberish(w2))  # "two or three", "five past two"
        or (w1, w2) in (("of", "out"), ("to", "up"))  # "nine out of ten", "up to ten"
        or (_is_numberish(w1) and bool(_RANGE_SEP_RE.fullmatch(sep)))  # "2 - three", "2/three"
        or (w1 in _NUMBERING_PREV and bool(_NUMBERING_SEP_RE.fullmatch(sep)))  # "part two"
        or (w1 in _NUMBERING_ABBREV and bool(_ABBREV_SEP_RE.fullmatch(sep)))  # "No. 2"
        or (plain and (w1 in _APPROX_PREV or w1 in _NOT_COUNT_PREV))  # "about ten", "aged three"
        or (plain and w1 in _ARTICLES and not _has_plural(_noun_phrase(right)))  # "a two seater"
        or (bare and plain and w1 in _BARE_PREV)  # "meet at ten.", "she is two"
        or (bare and sep.strip() == "," and not _looks_plural(w1))  # "Hattie, eight,"; not "players, two,"
    )


def _excluded_by_after(after: tuple[tuple[str, str], ...], right: str) -> bool:
    first = right.lstrip()[:1]  # \s* and str.lstrip skip the same (Unicode) spaces
    if first and (first in _AFTER_START or not first.isascii()) and _AFTER_RE.match(right):
        return True  # o'clock, pm, percent, "two and a half", "two point five"
    if not after:
        return False
    sep1, w1 = after[0]
    sep2, w2 = after[1] if len(after) > 1 else ("", "")
    w1, w2 = w1.partition("-")[0], w2.partition("-")[0]  # "hundred-year-old" -> "hundred"
    if not sep1.isspace():  # punctuation: excluded only as a range, "two - 3", "two/three"
        return bool(_RANGE_SEP_RE.fullmatch(sep1)) and _is_numberish(w1)
    return (
        w1 in _NUMBERISH or w1 in _UNITS or w1 in _FRACTIONS  # "two hundred", "three days"
        or (w1 == "quarters" and w2 == "of")  # "three quarters of"; "ten quarters" are coins
        or (w1 in _CONNECTORS and sep2.isspace() and _is_numberish(w2))  # "two or 3", "two in one"
        or (w1 == "or" and w2 in _APPROX_TAIL)  # "two or more"
        or (w1 == "out" and w2 == "of")  # "nine out of ten"
    )


@functools.lru_cache(maxsize=256)
def _noun_phrase(right: str) -> tuple[str, ...]:
    """The words after a number word that name what it counts, at most four, lower-cased (cached:
    `_is_counted` reads it for every occurrence, `parse_caption` again for the first counted one).
    Reads up to six words (to a stop word or punctuation), ends at the first plural-looking one and
    keeps its last four ("paper pulp lump sculptures"); "and" between modifiers stays ("black and
    white photos"). Without a plural, it ends before an -ing word ("bottle package")."""
    note = _DIGIT_NOTE_RE.match(right)
    right = right[note.end():] if note else right
    tokens = _tokens(right)
    if len(tokens) > 2 and tokens[0][1] == "of" and tokens[1][1] in _PARTITIVE:
        tokens = tokens[2:]  # "seven of the American League players"
    words: list[str] = []
    for sep, word in tokens:  # "and" joins only modifiers: no plural is read before it (that returns)
        if sep.strip() or word.isdigit() or len(words) == 6 or (word in _PHRASE_STOP and (word != _JOINER or not words)):
            break
        words.append(word)
        if _looks_plural(word):
            return tuple(_last_four(words))  # "cute little girls" (having fun)
    while words and words[-1] == _JOINER:
        words.pop()
    for i, word in enumerate(words):
        if i and len(word) > 4 and word.endswith("ing"):
            return tuple(_last_four(words[:i]))  # "bottle package" (including ...)
    return tuple(_last_four(words))


@functools.lru_cache(maxsize=256)
def _tokens(text: str) -> tuple[tuple[str, str], ...]:
    """The first ten (separator, lower-cased word) pairs (cached: `_is_counted`, then `_noun_phrase`)."""
    if text.isascii():  # lower-casing ASCII changes no word boundary: one call for the window
        return tuple(_NEXT_TOKEN_RE.findall(text.lower())[:10])
    return tuple((sep, word.lower()) for sep, word in _NEXT_TOKEN_RE.findall(text)[:10])


def _last_four(words: list[str]) -> list[str]:
    if len(words) <= 4:
        return words
    content = [i for i, w in enumerate(words) if w != _JOINER]
    return words[content[-4]:] if len(content) > 4 else words


def _has_plural(words: list[str]) -> bool:
    return any(_looks_plural(w) for w in words)


@functools.lru_cache(maxsize=8192)
def _looks_plural(word: str) -> bool:
    if word in _IRREGULAR_PLURALS:
        return True
    singular_endings = ("ss", "us", "is", "'s", "’s")  # glass, bus, axis, dog's
    return len(word) > 3 and word.endswith("s") and not word.endswith(singular_endings)
