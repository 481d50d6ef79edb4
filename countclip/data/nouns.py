"""Caption nouns -> detector classes: which class of a detection model a caption's noun names.

``class_for_noun("cute little girls", model.names)`` is the class "person" of a COCO model. The table
behind it is built from the model's own class names and their plurals (lemminflect), and, for every
class that carries a COCO name, from `countclip.vocabulary.coco_words`: the LVIS and Objects365
synonyms of that name ("sofa" -> couch), the names of Open Images / LVIS / Objects365 classes that are
kinds of it ("puppy" -> dog, "dove" -> bird) and the common words for people ("girls", "students").

Only the head noun counts, with the words before it that make one name ("hot dogs", "teddy bears"):
in "dog toys" the toys are counted, not the dogs, so it names no COCO class. A head noun that a
vocabulary names as something else ("gravestones", "dog collars") names no class either; the verify
stage then counts the dominant detected class or skips the row (``VerifyConfig.unmapped_noun``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from countclip import vocabulary


def plural(word: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word is pluralised (lemminflect)."""
    return vocabulary.plural(word)


def _class_names(names: Mapping[int, str] | Sequence[str]) -> tuple[tuple[int, str], ...]:
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    return tuple((int(i), " ".join(str(n).lower().replace("_", " ").split())) for i, n in items)


@lru_cache(maxsize=16)
def _noun_table(classes: tuple[tuple[int, str], ...]) -> dict[str, int]:
    """Lower-cased singular word or phrase -> class id.

    The model's class names (as written, singular, plural, without spaces) win over COCO's
    synonyms and kinds, so "orange" the fruit stays a class and "glass" maps to no COCO class.
    """
    table: dict[str, int] = {}
    for cls, name in classes:
        for key in (name, vocabulary.singular(name), plural(name), name.replace(" ", "")):
            table.setdefault(key, cls)
    ids = {name: cls for cls, name in classes}
    for word, coco_name in vocabulary.coco_words().items():
        if coco_name in ids:
            table.setdefault(word, ids[coco_name])
    return table


def class_for_noun(noun: str | None, names: Mapping[int, str] | Sequence[str]) -> int | None:
    """The detector class a caption's noun (or noun phrase) names, or None.

    ``names`` is the model's ``{id: name}`` (or a list of names). Tried in order: the runs of words
    ending at the head noun (the last word), longest first ("hot dogs" is hot dog, not dog), each as
    written and singular; then a compound head whose last part names a class ("businessmen",
    "lovebirds"), unless a vocabulary knows the whole head as another thing ("seahorse").
    """
    if not noun or not isinstance(noun, str):
        return None
    words = re.findall(r"[a-z]+(?:-[a-z]+)*", noun.lower().replace("’", "'").replace("'s", ""))
    if not words:
        return None
    table = _noun_table(_class_names(names))
    for start in range(len(words)):
        run = " ".join(words[start:])
        for key in vocabulary.forms(run):
            if key in table:
                return table[key]
    head = vocabulary.singular(words[-1])
    if head in vocabulary.vocabulary_words():
        return None  # "seahorse", "dog collar": a thing of its own
    for cut in range(3, len(head) - 2):  # "businessman" -> "man", "lovebird" -> "bird"
        if head[cut:] in table:
            return table[head[cut:]]
    return None
