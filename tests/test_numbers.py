"""countclip.numbers: which captions state a count, their rewrites, and the vectorised form."""

import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from countclip.numbers import (
    COUNTS,
    NUMBER_WORDS,
    CaptionCount,
    caption_variants,
    count_from_caption,
    counterfactual_caption,
    parse_caption,
)

from .conftest import COUNTBENCH

COUNTED = [
    ("three red circles on a blue background", 3),
    ("We review the ten best gaming headsets in the market", 10),
    ("Top Ten reissues", 10),
    ("Set of eight arrows in all directions vector", 8),
    ("d10 set of ten - Black", 10),
    ("Patterns: ten", 10),
    ("Seven of the players. All seven would be elected", 7),
    ("one of the two boys", 2),
    ("Nine-month-old Jasmine and her two dads", 2),
    ("ten quarters 90 percent silver", 10),  # coins are things
    ("Vector illustration of two pennies in a speech bubble", 2),
    ("Ten paperbacks for ten bucks", 10),  # the amount is not a count, the books are
    ("five 5 holiday nail polishes", 5),
    ("walked past two dogs", 2),
    ("look at two dogs", 2),
    ("A sunny day. Two dogs play", 2),  # "day two" is numbering, "day. Two" is not
    ("Silhouette of groom and a bride in a nine different poses", 9),  # "a" + plural still counts
    ("progress shot of two door garage", 2),
    ("Doting parents share five children: Liam, 12, Hattie, eight, Finn, seven, and Beau, two", 5),
    ("Lot of seven coins: XX reis, 1821-R (two), 1822-R (two)", 7),
]

NOT_COUNTS = {
    "parts of other words": ["often", "a tent", "twenty", "nineteen", "someone", "twofold",
                             "eighteen", "tenant", "network", "two_dogs", "ſix dogs", "tené dos"],
    "ages": ["three-year-old boy", "a girl three years old", "aged three", "two month old puppy",
             "she is two.", "he turns ten today", "ages five"],
    "clock times": ["three o'clock", "at ten pm", "ten thirty", "five past two", "meet at ten.",
                    "two in the morning", "ten a.m. sharp", "half past three"],
    "durations and periods": ["three days", "two weeks", "ten minutes", "two hours", "four seasons",
                              "two years ago", "three nights in Paris", "three times bigger"],
    "units and measures": ["two meters", "three inches", "ten percent", "two litres", "three miles",
                           "two stories tall", "ten % off", "two feet tall", "six kg"],
    "money": ["two dollars", "ten euros", "three pounds", "two cents", "paid ten bucks"],
    "compounds": ["two-way street", "three-piece suit", "two-tone", "four-wheel drive",
                  "ten-speed bike", "three-dimensional", "two-story house", "two's company",
                  "a three piece suit",
                  "a two seater sofa", "A five Felt Star mini garland"],
    "bigger numbers": ["two hundred", "three thousand", "two million", "twenty two", "twenty-two",
                       "a hundred and two", "two dozen eggs", "one two three four"],
    "ranges and approximations": ["two or three dogs", "two to three dogs", "two-three dogs",
                                  "two - three dogs", "2 or three dogs", "two or more dogs",
                                  "about ten people", "at least two cats", "up to ten guests",
                                  "nine out of ten dentists", "one in ten", "two in one"],
    "fractions": ["two thirds", "three quarters of the pie", "two and a half men",
                  "two point five"],
    "numbering": ["episode two", "season three", "part two", "chapter ten", "day three", "Mark Two",
                  "No. two", "World War Two", "level five boss", "a number two pencil"],
    "fixed expressions": ["take two", "high five", "catch twenty-two", "nine lives", "cloud nine",
                          "no two snowflakes are alike", "every two days"],
}


@pytest.mark.parametrize("caption,count", COUNTED)
def test_counted_captions(caption, count):
    assert count_from_caption(caption) == count


@pytest.mark.parametrize(
    "caption", [c for examples in NOT_COUNTS.values() for c in examples],
    ids=[f"{k}:{c}" for k, examples in NOT_COUNTS.items() for c in examples],
)
def test_non_count_uses_give_none(caption):
    assert count_from_caption(caption) is None


def test_number_words():
    words = "two three four five six seven eight nine ten".split()
    assert NUMBER_WORDS == dict(zip(words, range(2, 11)))
    assert tuple(COUNTS) == tuple(range(2, 11))


@pytest.mark.parametrize("word", ["two", "Two", "TWO", "tWo"])
def test_case_insensitive(word):
    assert count_from_caption(f"{word} dogs") == 2


@pytest.mark.parametrize("caption", ["(two dogs)", "two.", '"two"', "dogs: two", "#two dogs"])
def test_punctuation_is_a_word_boundary(caption):
    assert count_from_caption(caption) == 2


def test_different_counts_are_ambiguous():
    assert count_from_caption("two dogs and three cats") is None
    assert count_from_caption("Two cucumbers and three tomatoes") is None


def test_repeated_count_keeps_every_span():
    caption = "three dogs... the three dogs"
    assert parse_caption(caption).spans == ((0, 5), (18, 23))


def test_excluded_occurrences_do_not_conflict():
    parsed = parse_caption("a two-year-old with her five kittens")
    assert (parsed.count, parsed.spans) == (5, ((24, 28),))


@pytest.mark.parametrize(
    "caption,phrase,noun",
    [
        ("three red circles on a blue background", "red circles", "circles"),
        ("Set of eight arrows in all directions vector", "arrows", "arrows"),
        ("two cute little girls having fun", "cute little girls", "girls"),
        ("five black and white photos on a wall", "black and white photos", "photos"),
        ("Seven of the League All-Star players", "league all-star players", "players"),
        ("six bottle package including sauces", "bottle package", "package"),
        ("ten (10) coins", "coins", "coins"),
        ("set of ten", "", ""),
    ],
)
def test_noun_phrase_and_noun(caption, phrase, noun):
    parsed = parse_caption(caption)
    assert (parsed.noun_phrase, parsed.noun) == (phrase, noun)


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("two dögs", (2, "dögs")),  # non-ASCII context: the general tokenizer, not the ASCII fast path
        ("ÉTÉ two Ëlephants", (2, "ëlephants")),
        ("Café’s two dogs", (2, "dogs")),  # curly apostrophe inside the word before
        ("meet at ten\u00a0pm", None),  # a Unicode space before "pm" still reads as a clock time
        ("two\u2003percent", None),
        ("three o’clock", None),
        ("ten \u0131n the morning", None),  # dotless ı matches "in" case-insensitively: the regex must still run
    ],
)
def test_unicode_context_reads_like_ascii(caption, expected):
    parsed = parse_caption(caption)
    assert (parsed and (parsed.count, parsed.noun)) == expected


def test_parse_caption_is_a_frozen_record():
    parsed = parse_caption("Two dogs")
    assert parsed == CaptionCount(2, ((0, 3),), "dogs", "dogs")
    with pytest.raises(AttributeError):
        parsed.count = 3


@pytest.mark.parametrize("caption", [None, "", "   \n\t"])
def test_empty_captions_give_none(caption):
    assert parse_caption(caption) is None and count_from_caption(caption) is None


@pytest.mark.parametrize("bad", [b"two dogs", 2, float("nan"), ["two"], pd.NA])
def test_non_str_raises_type_error(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        count_from_caption(bad)


def test_caption_variants_rewrite_every_counted_occurrence_in_its_case():
    caption = "Three dogs, THREE bowls, three-year-old owner, three dogs"
    variants = caption_variants(caption, 3)
    assert sorted(variants) == list(range(2, 11))
    assert variants[3] == caption
    assert variants[7] == "Seven dogs, SEVEN bowls, three-year-old owner, seven dogs"
    assert all(count_from_caption(text) == count for count, text in variants.items())


@pytest.mark.parametrize(
    "caption,count", [("two dogs", 3), ("a dog", 2), ("two dogs and three cats", 2)]
)
def test_caption_variants_refuse_a_wrong_count(caption, count):
    with pytest.raises(ValueError, match="not"):
        caption_variants(caption, count)


@pytest.mark.parametrize("rng", [np.random.default_rng(0), random.Random(0)], ids=["np", "random"])
def test_counterfactual_never_the_true_count_and_covers_the_other_eight(rng):
    drawn = [counterfactual_caption("Four red circles", 4, rng) for _ in range(400)]
    seen = [count_from_caption(caption) for caption in drawn]
    assert all(caption.split()[0].istitle() for caption in drawn)  # "Four" -> "Seven", not "seven"
    assert set(seen) == set(COUNTS) - {4}
    assert min(seen.count(c) for c in set(seen)) > 20  # roughly uniform: 50 expected each


def test_counterfactual_refuses_a_wrong_count():
    with pytest.raises(ValueError):
        counterfactual_caption("two dogs", 5, random.Random(0))


TRICKY = [c for c, _ in COUNTED] + [c for examples in NOT_COUNTS.values() for c in examples]


def _mixtures(n: int, seed: int = 0) -> list[str]:
    """Random captions built from tricky fragments, plain words and number words in any case."""
    rng = random.Random(seed)
    words = ["dogs", "a", "set", "of", "the", "at", "-", ",", "(", ")", "and", "or", "years",
             "'s", "pm", "in", "one", "twenty", "hundred", "chairs", "on", ".", "part", "aged",
             "  ", "é"]
    numbers = [w for n in NUMBER_WORDS for w in (n, n.title(), n.upper())]
    out = []
    for _ in range(n):
        parts = [rng.choice(words + numbers + numbers + TRICKY) for _ in range(rng.randint(1, 8))]
        out.append(rng.choice([" ", "", "-"]).join(parts))
    return out








def test_variants_of_random_captions_state_their_count():
    for caption in _mixtures(1000, seed=1):
        parsed = parse_caption(caption)
        if parsed:
            variants = caption_variants(caption, parsed.count)
            assert all(count_from_caption(text) == c for c, text in variants.items())














def _countbench() -> list[dict]:
    if not COUNTBENCH.is_file():
        pytest.skip(f"CountBench not found at {COUNTBENCH}; point COUNTCLIP_COUNTBENCH at it")
    return json.loads(COUNTBENCH.read_text())


def test_countbench_recall_and_precision():
    entries = _countbench()
    assert len(entries) == 540 and {"image_url", "text", "number"} <= set(entries[0])
    counts = [count_from_caption(e["text"]) for e in entries]
    hits = sum(c == e["number"] for c, e in zip(counts, entries))
    returned = sum(c is not None for c in counts)
    recall, precision = hits / len(entries), hits / returned
    print(f"CountBench recall {recall:.4f} ({hits}/{len(entries)}), "
          f"precision {precision:.4f} ({hits}/{returned})")
    # The misses are captions naming several different counts, plus two compound modifiers
    # ("A five Felt Star mini garland", "two story tiny cottage"): see the module docstring.
    assert recall >= 0.96  # issue 12: the web-text cues may not cost CountBench its counts
    assert precision >= 0.98




# ------------------------------------------------------------------------------------------------
# Real LAION captions (tests/data/laion_captions_labelled.jsonl; how they were drawn and labelled:
# tests/data/LAION_LABELS.md)

LAION_LABELS = Path(__file__).parent / "data" / "laion_captions_labelled.jsonl"


def laion_labels() -> list[dict]:
    return [json.loads(line) for line in LAION_LABELS.read_text(encoding="utf-8").splitlines()]


def precision_recall(rows: list[dict], counts: list) -> tuple[float, float]:
    hits = sum(c is not None and c == r["count"] for r, c in zip(rows, counts))
    returned = sum(c is not None for c in counts)
    return hits / returned, hits / sum(r["count"] is not None for r in rows)


def test_labelled_laion_sample_is_what_its_doc_says():
    rows = laion_labels()
    assert len(rows) == 500 and len({r["caption"] for r in rows}) == 500
    assert {r["split"] for r in rows} == {"tune", "held_out", "fresh", "fresh2", "fresh3"}
    assert sum(r["split"] == "fresh3" for r in rows) == 100
    assert all((r["count"] is None) == (r["why"] != "count") and r["weight"] >= 1 for r in rows)
    assert all(r["count"] is None or 2 <= r["count"] <= 10 for r in rows)


@pytest.mark.parametrize("split, min_precision, min_recall, min_gain", [
    ("all", 0.85, 0.97, 0.10),  # measured 0.863 / 0.987 (previous grammar 0.717 / 0.987)
    # drawn from what the previous grammar accepts, labelled after the rules were frozen: never tuned on
    ("fresh2", 0.78, 0.95, 0.07),  # measured 0.793 / 0.972 (previous 0.710 / 1.000)
    # drawn from what this grammar (b6dfe23) accepts, labelled before it was run on them: recall is 1 by
    # construction and the previous grammar's figures are not comparable (it saw only this grammar's picks)
    ("fresh3", 0.84, 0.95, None),  # measured 0.850 (85 of 100)
])
def test_precision_and_recall_on_real_captions(split, min_precision, min_recall, min_gain):
    rows = [r for r in laion_labels() if split in ("all", r["split"])]
    precision, recall = precision_recall(rows, [count_from_caption(r["caption"]) for r in rows])
    before_p, before_r = precision_recall(rows, [r["previous_count"] for r in rows])
    print(f"{split}: precision {precision:.3f} recall {recall:.3f} (previous grammar {before_p:.3f} / {before_r:.3f})")
    assert precision >= min_precision and recall >= min_recall
    if min_gain is not None:
        assert precision >= before_p + min_gain and recall >= before_r - 0.03  # two misses in 71 on fresh2


@pytest.mark.parametrize("caption,count", [
    ("Two-tiger-cubs-playing-with-the-remains-of-a-Chrismas-tree", 2),  # a URL slug: hyphens are spaces
    ("Branded-Spirits-USA-Launches-Five-New-Products", 5),
    ("Wolford Opaque set-of-three white thongs", 3),
    ("Yorkshire Terriers (three) - Garden Pins", 3),  # "(three)" after a plural counts it
    ("Basketball-players, two, basket-throw, duel", 2),  # apposition to a plural
])
def test_web_forms_that_count(caption, count):
    assert count_from_caption(caption) == count


@pytest.mark.parametrize("caption", ["/nb-no/sea-two-pool-villa/hotel/x.html", "How-Can-Two-Walk-Together-(-The)",
                                     "Seiko-Mens-Two-Tone-Watch", "two-way"])
def test_slug_look_alikes(caption):
    assert count_from_caption(caption) is None


def test_100_kb_captions_are_parsed_in_linear_time():
    plain, counting = "a dog on a sofa " * 6400, "three dogs on a sofa " * 4900  # ~100 KB each
    start = time.perf_counter()
    assert count_from_caption(plain) is None
    parsed = parse_caption(counting)
    assert parsed.count == 3 and len(parsed.spans) == 4900
    assert len(caption_variants(counting, 3)[7]) == len(counting)
    assert time.perf_counter() - start < 10
