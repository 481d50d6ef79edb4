"""countclip.vocabulary: Ultralytics' class vocabularies, vocabulary.yaml's tables, singular and plural."""

import subprocess
import sys

import pytest
import yaml

from countclip import vocabulary


def tables() -> dict:
    return yaml.safe_load(vocabulary._TABLES.read_text())


def test_the_four_vocabularies_load_with_their_synonyms():
    sizes = {v: len(vocabulary.class_names(v)) for v in vocabulary.VOCABULARIES}
    assert sizes == {"coco": 80, "Objects365": 365, "open-images-v7": 601, "lvis": 1203}
    lvis = vocabulary.class_names("lvis")
    assert ("sofa", "couch", "lounge") in lvis  # "/"-separated synonyms, lower case
    assert ("bat", "bat animal") in lvis
    assert ("bat",) in vocabulary.class_names("open-images-v7")  # "Bat (Animal)": the qualifier dropped


def test_every_kind_is_a_vocabulary_name_and_every_key_a_coco_class():
    names = vocabulary.vocabulary_words()
    coco = {s[0] for s in vocabulary.class_names("coco")}
    t = tables()
    missing = [name for kinds in t["kinds"].values() for name in kinds if name not in names]
    assert not missing, f"kinds that no vocabulary names: {missing}"
    assert set(t["kinds"]) <= coco and set(t["words"]) <= coco


def test_coco_words_map_synonyms_kinds_and_people_to_coco_classes():
    words = vocabulary.coco_words()
    assert set(words.values()) <= {s[0] for s in vocabulary.class_names("coco")}
    expected = {"sofa": "couch", "aeroplane": "airplane", "boy": "person", "puppy": "dog", "dove": "bird",
                "cab": "car", "taxicab": "car", "mug": "cup", "student": "person", "people": "person"}
    assert {w: words[w] for w in expected} == expected
    assert "goat" not in words and "donkey" not in words  # not kinds of sheep or horse


def test_visible_and_not_visible_never_overlap():
    assert vocabulary.is_visible("lamp") and vocabulary.is_visible("lamps")  # head of "table lamp", plural
    assert vocabulary.is_visible("gravestones") and vocabulary.is_visible("joggers")
    assert vocabulary.is_not_visible("reasons") and vocabulary.is_not_visible("municipalities")
    assert not vocabulary.is_not_visible("signs")  # a vocabulary names signs
    overlap = [w for w in tables()["not_visible"] if vocabulary.is_visible(w)]
    assert not overlap, f"not_visible words that a vocabulary names: {overlap}"


@pytest.mark.parametrize("plural, singular", [
    ("puppies", "puppy"), ("geese", "goose"), ("women", "woman"), ("children", "child"), ("mice", "mouse"),
    ("knives", "knife"), ("sheep", "sheep"), ("hot dogs", "hot dog"), ("buses", "bus"),
])
def test_singular_and_plural(plural, singular):
    assert vocabulary.singular(plural) == singular
    assert vocabulary.plural(singular) in (plural, "busses")


def test_import_reads_nothing_and_never_imports_ultralytics():
    code = ("import sys, countclip.numbers, countclip.data.nouns, countclip.vocabulary as v;"
            "assert v.class_names.cache_info().currsize == 0;"
            "countclip.numbers.count_from_caption('two dogs');"
            "print('ultralytics' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_ultralytics_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(vocabulary.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="ultralytics is not installed"):
        vocabulary.datasets_dir()
