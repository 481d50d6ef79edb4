"""countclip.caption_cues, through the grammar: web-text uses of number words that count nothing
visible, and the look-alikes that still count."""

import pytest

from countclip.numbers import count_from_caption

NOT_COUNTS = {
    "compound modifiers": ["Laura G Two Tone Knitted Sweater", "faux two piece romper bib pants set",
                           "Two Tone", "a three tier cake stand", "Two Way Radio Walkie Talkie",
                           "Six Eyed Sand Spider Brazilian Wandering Spider", "Toner Cartridges - Two Pack",
                           "Two Queen Deluxe Cabin Kitchenette", "Two Man Orchestra"],
    "nothing visible": ["five reasons to visit Lisbon", "Chromium reserves in four regions",
                        "two decision variables", "Cedarville approved two new cabinet positions",
                        "ten tips for a better garden", "three generations of farmers"],
    "titles and names": ["The Three Musketeers: Gene Kelly and Gig Young", "Romance of the Three Kingdoms XIII",
                         "Five of Cups Tarot Card", "League Two - Rochdale pile misery on Bristol Rovers",
                         "Division Two, May 30, 2012", 'OK Go, "Three Primary Colors" on Sesame Street',
                         "Two Little Girls in Blue by Mary Higgins Clark", "(Tony Farlow/Four Seam Images)",
                         "Image de Army of TWO™ Le cartel du diable", "Disaster: a burst tyre on lap eight"],
    "capacities and people not pictured": ["Dinner for two?", "Massage For Two People - Save 73%",
                                           "shoots for two during the game", "cuts the village in two",
                                           "is looking for two school nurses", "hiring three drivers",
                                           "a crash that killed two teens"],
    "measures": ['Two 1/2" Thin Magnetic Snaps', "Burton Seven 154cm Snowboard", "Seven v8 Workout"],
    "works and listings": ["Two Mules for Sister Sara (1970) 720p BRRip x264", "Seven Minute Workout Full APK",
                           "Love Under Two Kendalls (Lusty, Texas #9)", "Five Little Monkeys Paperback",
                           "Homosexuality and the Bible : Two Views (03 Edition)"],
    "names closing in a number": ["david-lynch-the-art-life-two", "toy story two"],
    "streaks, idioms, yields": ["the Bills win four consecutive AFC crowns", "Two of a Kind Pink Dresses",
                                "Makes two small glasses.", "This cabin sleeps four", "serves six people"],
    "more words of a Title Case compound": ["Image of Three Horse Bedding Set",
                                            "Three Pan Exposed Portable Steam Table with Coated Legs"],
    "victims": ["the man who shot her four children"],
    "abstract heads": ["the seven deadly sins", "four factors of success", "ten things to do in Rome"],
}

COUNTS = [
    ("progress shot of two door garage", 2),  # any singular but a listed modifier stays a count
    ("three color balloons", 3), ("Cotton blend four pack of mens socks", 4), ("two piece swimsuits", 2),
    ("two sponsor logos are shown", 2), ("five types of Pacific salmon", 5),  # kinds: CountBench counts them
    ("Set of six enamelled, gilt silver espresso spoons", 6), ("Two horned cows", 2),
    ("Frida Kahlo The Two Fridas Framed Print", 2),  # a picture's title says what it shows
    ("Crab Posters - Three Boys in a Dory Poster by Winslow Homer", 3),
    ("Six Firefighters Standing By Fire Engine", 6), ('A set of six ""Merryman"" plates', 6),
    ("Two Women Arrested For Faking Injuries", 2), ("Two yogis after yoga practice", 2),
    ("Set of Six Dining Chairs with Lattice-Work Splat", 6), ('"two"', 2),
    ("Two youth speaking at a microphone", 2), ("two 5mm beads", 2),  # a measure before the noun
    ("a set of two", 2), ("lovely puppies two", 2), ("two straight lines", 2),
    ("Two Dog Beds", 2), ("Two Mules", 2),  # a plural; a title cue needs a listing
]


@pytest.mark.parametrize(
    "caption", [c for examples in NOT_COUNTS.values() for c in examples],
    ids=[f"{k}:{c[:30]}" for k, examples in NOT_COUNTS.items() for c in examples],
)
def test_cues_drop_number_words_that_count_nothing_visible(caption):
    assert count_from_caption(caption) is None


@pytest.mark.parametrize("caption,count", COUNTS)
def test_look_alikes_still_count(caption, count):
    assert count_from_caption(caption) == count


def test_dropping_one_occurrence_can_leave_the_other_as_the_count():
    # "six pack" is a modifier, so the caption no longer states two different counts
    assert count_from_caption("Three dogs on a six pack cooler") == 3
    assert count_from_caption("Ten School Resource Officers serve in seven local school districts") == 10
