import json

import numpy as np
import pytest
import torch
from PIL import Image

from countclip.evaluate import (
    benchmark_captions,
    cached_image_name,
    counting_report,
    evaluate_countbench,
    load_countbench,
    zeroshot_accuracy,
)
from countclip.world.files import write_benchmark

WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench") / "b", seed=1, per_count=3, image_size=64)


def independent_predictions(model, tokenizer, bench):
    """The protocol written out plainly: nine captions, cosine similarity, argmax."""
    entries = json.loads(bench.read_text())
    out = []
    model.eval()
    with torch.no_grad():
        for e in entries:
            image = Image.open(bench.parent / e["image_url"]).convert("RGB")
            x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()[None] / 255
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
            img = model.encode_image((x - mean) / std)
            word = WORDS[e["number"] - 2]
            texts = [e["text"].replace(word, w, 1) for w in WORDS]
            txt = model.encode_text(tokenizer(texts))
            sims = torch.nn.functional.cosine_similarity(img, txt)
            out.append(int(sims.argmax()) + 2)
    return entries, out


def test_accuracy_equals_an_independent_computation(tiny_model, bench):
    model, preprocess, tokenizer = tiny_model
    entries, predicted = independent_predictions(model, tokenizer, bench)
    report = evaluate_countbench(model, tokenizer, preprocess, bench)
    assert report.predictions == predicted
    truth = [e["number"] for e in entries]
    assert report.accuracy == pytest.approx(np.mean(np.array(truth) == np.array(predicted)))
    assert report.scored == 27 and report.missing == 0
    assert report.confusion.sum() == 27 and report.confusion.sum(1).tolist() == [3] * 9


def test_missing_and_unreadable_images_are_counted(tiny_model, bench, tmp_path):
    model, preprocess, tokenizer = tiny_model
    entries = json.loads(bench.read_text())
    folder = tmp_path / "partial"
    (folder / "images").mkdir(parents=True)
    for e in entries[:20]:
        (folder / e["image_url"]).write_bytes((bench.parent / e["image_url"]).read_bytes())
    (folder / entries[0]["image_url"]).write_bytes(b"<html>not an image</html>")
    (folder / "bench.json").write_text(json.dumps(entries))
    report = evaluate_countbench(model, tokenizer, preprocess, folder / "bench.json")
    assert (report.scored, report.missing) == (19, 8)


def test_remote_urls_resolve_to_cached_files(tiny_model, bench, tmp_path):
    model, preprocess, tokenizer = tiny_model
    entries = json.loads(bench.read_text())[:4]
    remote = []
    for i, e in enumerate(entries):
        url = f"https://example.com/img/{i}.jpg"
        (tmp_path / f"{cached_image_name(url)}.png").write_bytes((bench.parent / e["image_url"]).read_bytes())
        remote.append({**e, "image_url": url})
    remote.append({**entries[0], "image_url": "https://dead.example.com/gone.jpg"})
    (tmp_path / "cb.json").write_text(json.dumps(remote))
    report = evaluate_countbench(model, tokenizer, preprocess, tmp_path / "cb.json", image_root=tmp_path)
    assert (report.scored, report.missing) == (4, 1)


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"image_url": "a.png", "text": "two dogs"}]', r"lacks field\(s\) \['number'\]"),
        ('[{"image_url": "a.png", "text": "two dogs", "number": 11}]', "expected an integer 2..10"),
        ('{"image_url": "a.png"}', "JSON list"),
        ("[{]", "not valid JSON"),
    ],
)
def test_bad_benchmark_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "cb.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_countbench(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_countbench(tmp_path / "absent.json")


def test_benchmark_captions_fall_back_to_the_label():
    assert benchmark_captions("Three dogs", 3)[7] == "Seven dogs"
    # "two-way" is not a count for the grammar, but the benchmark label is authoritative.
    assert benchmark_captions("a two-way mirror", 2)[5] == "a five-way mirror"
    assert benchmark_captions("a mirror", 2) is None


def test_counting_report_metrics():
    report = counting_report(np.array([2, 2, 3, 3, 4]), np.array([2, 3, 3, 3, 2]))
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.per_count_accuracy == {2: 0.5, 3: 1.0, 4: 0.0}
    assert report.confusion[0, 1] == 1 and report.confusion[2, 0] == 1
    # F1: count 2: p=1/2 r=1/2 -> .5; count 3: p=2/3 r=1 -> .8; count 4: 0.
    assert report.macro_f1 == pytest.approx((0.5 + 0.8 + 0) / 3)


def test_zeroshot_accuracy_counts_hits(tiny_model):
    model, _, tokenizer = tiny_model
    images = torch.randn(10, 3, 64, 64)
    prompts = [["a photo of circles"], ["a photo of stars"]]
    with torch.no_grad():
        feats = model.encode_image(images, normalize=True)
        cls = model.encode_text(tokenizer(["a photo of circles", "a photo of stars"]), normalize=True)
    labels = (feats @ cls.T).argmax(-1).numpy()
    assert zeroshot_accuracy(model, tokenizer, images, labels, prompts) == 1.0
    assert zeroshot_accuracy(model, tokenizer, images, 1 - labels, prompts) == 0.0


class _FakeClip(torch.nn.Module):
    """Image i embeds as one-hot(code[i]); a query embeds as one-hot of its (count, noun) code."""

    def __init__(self, codes):
        super().__init__()
        self.codes = codes

    def encode_image(self, images, normalize=True):
        return torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), 8).float()

    def encode_text(self, tokens, normalize=True):
        return torch.nn.functional.one_hot(tokens[:, 0].long(), 8).float()


def test_retrieval_metrics_rank_by_count_and_noun():
    from countclip.evaluate import retrieval_metrics

    counts = np.array([2, 2, 3, 3, 3, 4])
    nouns = ["dogs", "cats", "dogs", "dogs", "cats", "dogs"]
    pairs = sorted({(int(c), n) for c, n in zip(counts, nouns)})
    # Image 3 (three dogs) is drawn as "two cats": the model will retrieve it for the wrong query.
    drawn = [pairs.index((2, "dogs")), pairs.index((2, "cats")), pairs.index((3, "dogs")),
             pairs.index((2, "cats")), pairs.index((3, "cats")), pairs.index((4, "dogs"))]
    images = torch.zeros(6, 3, 4, 4)
    images[:, 0, 0, 0] = torch.tensor(drawn, dtype=torch.float)
    word = {2: "two", 3: "three", 4: "four"}

    def tokenizer(texts):
        return torch.tensor([[pairs.index(next((c, n) for c, n in pairs if t == f"a photo of {word[c]} {n}"))]
                             for t in texts])

    metrics = retrieval_metrics(_FakeClip(drawn), tokenizer, images, counts, nouns, k=1)
    # Queries: (2,cats) top-1 is image 1 or 3 (tie; both "two cats"), (2,dogs) -> 0, (3,cats) -> 4,
    # (3,dogs) -> 2, (4,dogs) -> 5: all correct except possibly (2,cats) -> image 3 (count 3).
    assert metrics["queries"] == 5
    assert metrics["recall@1"] in (pytest.approx(1.0), pytest.approx(0.8))
    assert metrics["count_precision@1"] == pytest.approx(metrics["recall@1"])
    two = retrieval_metrics(_FakeClip(drawn), tokenizer, images, counts, nouns, k=2)
    # (2,cats) now retrieves images 1 and 3: one of two hold two cats; (3,dogs) retrieves image 2 and
    # one wrong image, and its second relevant image (3) is never found.
    assert two["recall@2"] < 1.0


def test_zeroshot_on_an_imagefolder(tiny_model, tmp_path):
    from countclip.evaluate import zeroshot_imagefolder

    model, preprocess, tokenizer = tiny_model
    for name, colour in (("red_apple", (220, 20, 20)), ("blue_car", (20, 20, 220))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "blue_car" / "broken.jpg").write_bytes(b"not a jpeg")
    result = zeroshot_imagefolder(model, tokenizer, preprocess, tmp_path)
    assert result["classes"] == 2 and result["images"] == 6 and result["unreadable"] == 1
    assert 0 <= result["accuracy"] <= 1
    with pytest.raises(ValueError, match="not an ImageFolder-style dataset"):
        zeroshot_imagefolder(model, tokenizer, preprocess, tmp_path / "red_apple")
