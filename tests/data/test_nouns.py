"""Caption nouns -> detector classes (countclip.data.nouns), for COCO and for CountWorld's shapes."""

from __future__ import annotations

import pytest

from countclip.data.nouns import class_for_noun, plural
from countclip.world.scenes import PLURALS, SHAPES

COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
        "scissors", "teddy bear", "hair drier", "toothbrush"]
COCO_NAMES = dict(enumerate(COCO))  # the shape of model.names


def coco(noun):
    cls = class_for_noun(noun, COCO_NAMES)
    return None if cls is None else COCO[cls]


def test_plural_rules():
    assert [plural(w) for w in ("dog", "bus", "box", "bench", "brush", "lady", "toy", "person", "knife", "mouse",
                                "sheep", "traffic light", "wine glass", "cross")] == [
        "dogs", "buses", "boxes", "benches", "brushes", "ladies", "toys", "people", "knives", "mice",
        "sheep", "traffic lights", "wine glasses", "crosses"]


@pytest.mark.parametrize("noun, expected", [
    # names and their plurals, regular and irregular
    ("dogs", "dog"), ("dog", "dog"), ("buses", "bus"), ("knives", "knife"), ("mice", "mouse"), ("sheep", "sheep"),
    ("benches", "bench"), ("Dogs", "dog"), ("skis", "skis"), ("scissors", "scissors"),
    # multi-word classes, and their head word not swallowed by a shorter class
    ("traffic lights", "traffic light"), ("wine glasses", "wine glass"), ("hot dogs", "hot dog"),
    ("teddy bears", "teddy bear"), ("cell phones", "cell phone"), ("stop signs", "stop sign"),
    # synonyms from the brief and a few more
    ("people", "person"), ("persons", "person"), ("men", "person"), ("women", "person"), ("boys", "person"),
    ("girls", "person"), ("kids", "person"), ("children", "person"), ("guys", "person"), ("ladies", "person"),
    ("players", "person"), ("friends", "person"), ("students", "person"), ("puppies", "dog"), ("pups", "dog"),
    ("kittens", "cat"), ("cars", "car"), ("bikes", "bicycle"), ("motorbikes", "motorcycle"),
    ("planes", "airplane"), ("aeroplanes", "airplane"), ("jets", "airplane"), ("televisions", "tv"),
    ("phones", "cell phone"), ("smartphones", "cell phone"), ("sofas", "couch"), ("tables", "dining table"),
    ("doughnuts", "donut"), ("cupcakes", "cake"), ("fridges", "refrigerator"), ("balls", "sports ball"),
    # any word of the phrase, the head noun first
    ("cute little girls", "person"), ("black and white photos of dogs", "dog"), ("dog toys", "dog"),
    ("orange cats", "cat"), ("little girl's puppies", "dog"),
    # singulars guessed for plurals not listed
    ("oranges", "orange"), ("zebras", "zebra"),
])
def test_class_for_noun_coco(noun, expected):
    assert coco(noun) == expected


@pytest.mark.parametrize("noun", ["ideas", "galaxies", "", None, "  ", "123", "reasons why"])
def test_unknown_nouns_map_to_no_class(noun):
    assert class_for_noun(noun, COCO_NAMES) is None


def test_class_for_noun_countworld_shapes():
    assert [SHAPES[class_for_noun(PLURALS[s], SHAPES)] for s in SHAPES] == list(SHAPES)
    assert SHAPES[class_for_noun("small red crosses", SHAPES)] == "cross"
    assert SHAPES[class_for_noun("Hexagon", SHAPES)] == "hexagon"
    assert class_for_noun("dogs", SHAPES) is None  # synonyms only apply to classes the model has


