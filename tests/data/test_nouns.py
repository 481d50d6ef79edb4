"""Caption nouns -> detector classes (countclip.data.nouns), for COCO and for CountWorld's shapes."""

from __future__ import annotations

import pytest

from countclip import vocabulary
from countclip.data.nouns import class_for_noun, plural
from countclip.world.scenes import PLURALS, SHAPES

COCO = [synonyms[0] for synonyms in vocabulary.class_names("coco")]
COCO_NAMES = dict(enumerate(COCO))  # the shape of model.names


def coco(noun):
    cls = class_for_noun(noun, COCO_NAMES)
    return None if cls is None else COCO[cls]


def test_coco_names_come_from_ultralytics():
    assert len(COCO) == 80 and COCO[:3] == ["person", "bicycle", "car"] and COCO[-1] == "toothbrush"


def test_plural_is_lemminflect():
    assert [plural(w) for w in ("dog", "bus", "box", "bench", "lady", "knife", "mouse", "sheep", "traffic light",
                                "wine glass", "cross")] == [
        "dogs", "buses", "boxes", "benches", "ladies", "knives", "mice", "sheep", "traffic lights",
        "wine glasses", "crosses"]


@pytest.mark.parametrize("noun, expected", [
    # COCO's names and their plurals, regular and irregular
    ("dogs", "dog"), ("dog", "dog"), ("buses", "bus"), ("knives", "knife"), ("mice", "mouse"), ("sheep", "sheep"),
    ("benches", "bench"), ("Dogs", "dog"), ("skis", "skis"), ("scissors", "scissors"),
    # multi-word classes, and their head word not swallowed by a shorter class
    ("traffic lights", "traffic light"), ("wine glasses", "wine glass"), ("hot dogs", "hot dog"),
    ("teddy bears", "teddy bear"), ("cell phones", "cell phone"), ("stop signs", "stop sign"),
    # LVIS / Objects365 synonyms of a COCO name
    ("sofas", "couch"), ("aeroplanes", "airplane"), ("doughnuts", "donut"), ("television sets", "tv"),
    ("motorbuses", "bus"), ("rucksacks", "backpack"), ("boys", "person"), ("women", "person"), ("babies", "person"),
    # kinds of a COCO class, from the other vocabularies (vocabulary.yaml `kinds`)
    ("puppies", "dog"), ("doves", "bird"), ("pigeons", "bird"), ("geese", "bird"), ("kittens", "cat"),
    ("foals", "horse"), ("lambs", "sheep"), ("calves", "cow"), ("taxis", "car"), ("cabs", "car"),
    ("pickup trucks", "truck"), ("sailboats", "boat"), ("mugs", "cup"), ("teacups", "cup"), ("stools", "chair"),
    ("armchairs", "chair"), ("monitors", "tv"), ("laptop computers", "laptop"), ("basketballs", "sports ball"),
    # words for people that no vocabulary has (vocabulary.yaml `words`)
    ("people", "person"), ("girls", "person"), ("kids", "person"), ("children", "person"), ("students", "person"),
    ("sisters", "person"), ("firefighters", "person"), ("joggers", "person"), ("ladies", "person"),
    # the head noun, with the modifiers before it
    ("cute little girls", "person"), ("little girl's puppies", "dog"), ("orange cats", "cat"),
    ("old fashioned bicycles", "bicycle"), ("flat white coffees", None),
    # compound heads
    ("businessmen", "person"), ("lovebirds", "bird"), ("schoolgirls", "person"),
    # singulars of plurals the table does not list
    ("oranges", "orange"), ("zebras", "zebra"), ("giraffes", "giraffe"),
])
def test_class_for_noun_coco(noun, expected):
    assert coco(noun) == expected


@pytest.mark.parametrize("noun", [
    "ideas", "galaxies", "", None, "  ", "123", "reasons why",
    "dog toys",  # the toys are counted, not the dogs
    "dog collars", "gravestones", "seahorses",  # vocabulary names of other things
    "goats", "donkeys", "koalas",  # not kinds of sheep, horse or bear
])
def test_nouns_naming_no_coco_class(noun):
    assert class_for_noun(noun, COCO_NAMES) is None


def test_class_for_noun_countworld_shapes():
    assert [SHAPES[class_for_noun(PLURALS[s], SHAPES)] for s in SHAPES] == list(SHAPES)
    assert SHAPES[class_for_noun("small red crosses", SHAPES)] == "cross"
    assert SHAPES[class_for_noun("Hexagon", SHAPES)] == "hexagon"
    assert class_for_noun("dogs", SHAPES) is None  # COCO's synonyms apply only to classes of that name
