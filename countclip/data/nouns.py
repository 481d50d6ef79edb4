"""Caption nouns -> detector classes: which class of a detection model a caption's noun names.

``class_for_noun("cute little girls", model.names)`` is the class "person" of a COCO model; the table
behind it is built from the model's own class names, their plurals and the synonyms below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

# Words a caption may use for a COCO class, beside the class name and its plural: space-separated,
# "_" joins the words of one synonym. Singular or plural forms both work: every entry is also pluralised.
COCO_SYNONYMS: dict[str, str] = {
    "person": (
        "people persons man men woman women boy girl kid child children guy lady ladies gentleman gentlemen "
        "player friend student baby babies toddler teenager teen adult human individual member athlete "
        "worker soldier dancer singer musician brother sister sibling son daughter mother father mom dad "
        "parent grandparent grandchild grandchildren bride bridesmaid groom groomsman groomsmen kiddo "
        "runner rider skier surfer skateboarder cyclist biker model actor actress cowboy officer policeman "
        "policemen firefighter fireman firemen doctor nurse chef teacher pupil tourist visitor fan "
        "spectator customer passenger pedestrian climber hiker swimmer golfer boyfriend girlfriend "
        "youngster youth infant newborn twin triplet cousin uncle aunt nephew niece wife husband dude gal "
        "lad lass monk nun priest warrior knight princess prince queen king superhero cheerleader coach "
        "employee colleague artist"
    ),
    "bicycle": "bike cycle",
    "car": "automobile sedan suv taxi cab vehicle jeep convertible coupe",
    "motorcycle": "motorbike scooter moped chopper",
    "airplane": "plane aeroplane aircraft jet airliner jetliner",
    "bus": "busses minibus trolleybus",
    "train": "locomotive tram streetcar railcar carriage wagon",
    "truck": "lorry lorries pickup van trailer",
    "boat": "ship sailboat yacht canoe kayak ferry vessel rowboat dinghy",
    "traffic light": "traffic_signal stoplight stop_light",
    "fire hydrant": "hydrant",
    "bench": "benches pew",
    "bird": (
        "parrot pigeon dove duck duckling goose geese gull seagull swan owl eagle hawk chicken hen rooster "
        "chick penguin flamingo crow sparrow finch robin pelican heron crane turkey peacock hummingbird"
    ),
    "cat": "kitten kitty kitties kittens feline tomcat",
    "dog": (
        "puppy puppies pup doggy doggies doggo hound canine retriever terrier poodle labrador spaniel bulldog "
        "beagle chihuahua dachshund husky huskies corgi pug collie shepherd"
    ),
    "horse": "pony ponies foal stallion mare colt donkey",
    "sheep": "lamb ewe ram goat",
    "cow": "cattle bull calf calves ox oxen heifer buffalo buffaloes",
    "bear": "cub grizzly grizzlies panda polar_bear",
    "backpack": "rucksack knapsack bookbag",
    "umbrella": "parasol",
    "handbag": "purse bag clutch tote",
    "tie": "necktie bowtie bow_tie",
    "suitcase": "luggage baggage",
    "frisbee": "flying_disc disc",
    "skis": "ski",
    "sports ball": "ball football soccer_ball basketball baseball volleyball tennis_ball golf_ball beach_ball",
    "baseball bat": "bat",
    "baseball glove": "glove mitt",
    "skateboard": "longboard",
    "surfboard": "board paddleboard",
    "tennis racket": "racket racquet",
    "bottle": "flask jug",
    "wine glass": "glass goblet champagne_glass flute",
    "cup": "mug teacup coffee_cup",
    "knife": "knives",
    "spoon": "teaspoon tablespoon ladle",
    "sandwich": "burger hamburger panini",
    "orange": "tangerine mandarin clementine",
    "broccoli": "broccolis",
    "hot dog": "hotdog sausage",
    "pizza": "pizzas",
    "donut": "doughnut",
    "cake": "cupcake cheesecake muffin",
    "chair": "stool armchair",
    "couch": "sofa settee loveseat",
    "potted plant": "plant houseplant succulent cactus cacti flowerpot pot_plant",
    "bed": "bunk",
    "dining table": "table desk kitchen_table",
    "toilet": "loo",
    "tv": "television tv_set monitor screen tvs",
    "laptop": "notebook computer macbook",
    "mouse": "mice",
    "remote": "remote_control controller",
    "cell phone": "phone smartphone cellphone mobile iphone mobile_phone",
    "oven": "stove",
    "sink": "basin",
    "refrigerator": "fridge freezer",
    "book": "novel textbook paperback hardcover",
    "clock": "watch",
    "scissors": "shears",
    "teddy bear": "teddy teddies stuffed_bear plush",
    "hair drier": "hair_dryer hairdryer blow_dryer",
    "toothbrush": "toothbrushes",
}

_IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "knife": "knives", "sheep": "sheep", "fish": "fish", "deer": "deer", "goose": "geese",
    "ox": "oxen", "calf": "calves", "leaf": "leaves", "wolf": "wolves", "shelf": "shelves",
    "foot": "feet", "tooth": "teeth", "scissors": "scissors", "skis": "skis", "cactus": "cacti",
    "broccoli": "broccoli", "gentleman": "gentlemen", "policeman": "policemen", "fireman": "firemen",
}


def plural(word: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word is pluralised."""
    head, _, last = word.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _singulars(word: str) -> list[str]:
    """Plain guesses at the singular of an unknown plural ("boxes" -> box, boxe; "berries" -> berry)."""
    guesses = []
    if word.endswith("ies") and len(word) > 4:
        guesses.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        guesses += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        guesses.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        guesses.append(word[:-1])
    return guesses


def _class_names(names: Mapping[int, str] | Sequence[str]) -> tuple[tuple[int, str], ...]:
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    return tuple((int(i), str(n).lower().strip()) for i, n in items)


@lru_cache(maxsize=16)
def _noun_table(classes: tuple[tuple[int, str], ...]) -> dict[str, int]:
    """Lower-cased word or phrase -> class id, from the class names, their plurals and synonyms.

    Class names and their plurals win over synonyms ("orange" the fruit is a class; "glass" only a
    synonym of "wine glass"); among synonyms the first class listed wins.
    """
    table: dict[str, int] = {}
    for cls, name in classes:
        for key in (name, plural(name), name.replace("_", " "), name.replace(" ", "")):
            table.setdefault(key, cls)
    for cls, name in classes:
        for synonym in (word.replace("_", " ") for word in COCO_SYNONYMS.get(name, "").split()):
            table.setdefault(synonym, cls)
            table.setdefault(plural(synonym), cls)
    return table


def class_for_noun(noun: str | None, names: Mapping[int, str] | Sequence[str]) -> int | None:
    """The detector class a caption's noun (or noun phrase) names, or None.

    ``names`` is the model's ``{id: name}`` (or a list of names). Tried in order: the longest run of
    words ending at the head noun (the last word: "hot dogs" is hot dog, not dog), then the head noun
    alone, then every other word from right to left ("girls" in "cute little girls", "dog" in "dog
    toys"); each as written, then as a guessed singular.
    """
    if not noun or not isinstance(noun, str):
        return None
    words = re.findall(r"[a-z]+", noun.lower().replace("’", "'").replace("'s", ""))
    if not words:
        return None
    table = _noun_table(_class_names(names))
    candidates = [" ".join(words[start:]) for start in range(len(words) - 1)]  # longest first
    candidates += list(reversed(words))  # head noun, then the others from right to left
    for text in candidates:
        for key in (text, *_singulars(text)):
            if key in table:
                return table[key]
    return None
