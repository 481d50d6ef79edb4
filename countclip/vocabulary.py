"""Visible, countable things: Ultralytics' class vocabularies, singular and plural, and COCO's kinds.

The vocabularies are the detection datasets' class names that ship inside the installed ultralytics
package (``ultralytics/cfg/datasets/``): COCO's 80, Objects365's 365, Open Images V7's 601 and LVIS's
1,203, with LVIS's and Objects365's "/"-separated synonyms ("sofa/couch/lounge"). They are read from
the package's files, never imported from it (importing ultralytics writes its settings file).

- ``is_visible(word)``: a vocabulary names it (or it is the head word of a name: "lamp" of "table
  lamp"), or it is one of the words for people and animals in ``vocabulary.yaml``;
- ``is_not_visible(word)``: the head noun names what a picture cannot show ("reasons", "regions"):
  ``vocabulary.yaml``'s ``not_visible``, never a word a vocabulary names;
- ``coco_words()``: word or phrase -> COCO class name, from COCO's names, the LVIS/Objects365 entries
  that list a COCO name among their synonyms, ``vocabulary.yaml``'s ``kinds`` (which names of the other
  vocabularies are kinds of which COCO class: "puppy" -> dog, "dove" -> bird) and its ``words``;
- ``singular(word)`` and ``plural(word)``: lemminflect, for every word these tables are looked up by.

Everything is lower-case ASCII-folded text; the tables are built once per process (~0.1 s).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import yaml

VOCABULARIES = ("coco", "Objects365", "open-images-v7", "lvis")
_TABLES = Path(__file__).with_name("vocabulary.yaml")
_STOP = frozenset("of for on at or and a an the in with to".split())  # not part of a head noun


def datasets_dir() -> Path:
    """ultralytics/cfg/datasets of the installed ultralytics, found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.origin:
        raise ModuleNotFoundError("ultralytics is not installed: its class vocabularies are needed (pip install ultralytics)")
    return Path(spec.origin).parent / "cfg" / "datasets"


@functools.cache
def class_names(vocabulary: str) -> tuple[tuple[str, ...], ...]:
    """One vocabulary's classes, in id order, each as its normalised synonyms ("couch", "sofa", ...)."""
    path = datasets_dir() / f"{vocabulary}.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        names = yaml.load(f, Loader=loader)["names"]
    return tuple(tuple(dict.fromkeys(_normalise(s) for s in str(name).split("/") if _normalise(s)))
                 for _, name in sorted(names.items()))


def _normalise(name: str) -> str:
    """Lower case, "(Animal)"-style qualifiers dropped, spaces and hyphens kept as written."""
    return " ".join(re.sub(r"\(.*?\)", " ", name.lower().replace("’", "'")).split())


@functools.cache
def _tables() -> dict:
    with open(_TABLES, encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def singular(word: str) -> str:
    """The singular of a lower-case noun ("puppies" -> "puppy", "geese" -> "goose"); multi-word: the last word."""
    head, _, last = word.rpartition(" ")
    from lemminflect import getLemma  # its dictionaries load on first use (~0.2 s)

    lemmas = getLemma(last, upos="NOUN")
    lemma = lemmas[0] if lemmas else last
    return f"{head} {lemma}" if head else lemma


@functools.cache
def plural(word: str) -> str:
    """The plural of a lower-case singular noun ("puppy" -> "puppies"); multi-word: the last word."""
    head, _, last = word.rpartition(" ")
    from lemminflect import getInflection

    forms = getInflection(last, tag="NNS")
    form = forms[0] if forms else last + "s"
    return f"{head} {form}" if head else form


def forms(word: str) -> tuple[str, ...]:
    """The word as written and its singular, without repeats."""
    return tuple(dict.fromkeys((word, singular(word))))


@functools.cache
def vocabulary_words() -> frozenset[str]:
    """Every synonym of every class of the four vocabularies."""
    return frozenset(s for v in VOCABULARIES for synonyms in class_names(v) for s in synonyms)


@functools.cache
def _visible() -> frozenset[str]:
    names = set(vocabulary_words())
    for name in list(names):  # "table lamp" -> "lamp": the head of a short name is a thing too
        words = name.split()
        if 1 < len(words) <= 3 and not _STOP & set(words):
            names.add(words[-1])
    names |= {w for words in _tables()["words"].values() for w in words}
    return frozenset(names)


@functools.lru_cache(maxsize=8192)
def is_visible(word: str) -> bool:
    """Whether a vocabulary (or vocabulary.yaml's words) names this noun, as written or singular."""
    return any(f in _visible() for f in forms(word))


@functools.cache
def _not_visible() -> frozenset[str]:
    return frozenset(w for w in _tables()["not_visible"] if w not in _visible())


@functools.lru_cache(maxsize=8192)
def is_not_visible(word: str) -> bool:
    """Whether the noun names what a picture cannot show ("reasons", "four regions"), see the module doc."""
    return not is_visible(word) and any(f in _not_visible() for f in forms(word))


@functools.cache
def modifiers() -> frozenset[str]:
    """Singular nouns that make a compound modifier after a number word ("two tone"): vocabulary.yaml."""
    return frozenset(_tables()["modifiers"])


@functools.cache
def coco_words() -> dict[str, str]:
    """Word or phrase (singular) -> the COCO class it is or is a kind of (see the module doc)."""
    coco = [synonyms[0] for synonyms in class_names("coco")]
    table = {name: name for name in coco}
    for vocabulary in ("lvis", "Objects365"):  # entries listing a COCO name among their synonyms
        for synonyms in class_names(vocabulary):
            for cls in (s for s in synonyms if s in table and table[s] == s):
                for synonym in synonyms:
                    table.setdefault(synonym, cls)
    tables = _tables()
    entries = [synonyms for v in VOCABULARIES for synonyms in class_names(v)]
    for cls, names in tables["kinds"].items():  # a kind's entry brings all its synonyms: taxi -> cab
        for name in names:
            for synonym in (s for synonyms in entries if name in synonyms for s in synonyms):
                table.setdefault(synonym, cls)
    for cls, words in tables["words"].items():
        for word in words:
            table.setdefault(word, cls)
    return table
