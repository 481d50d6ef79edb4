import json

from countclip.numbers import count_from_caption
from countclip.world.files import write_benchmark


def test_benchmark_is_balanced_and_in_countbench_format(tmp_path):
    path = write_benchmark(tmp_path / "bench", seed=3, per_count=4, image_size=48)
    entries = json.loads(path.read_text())
    assert len(entries) == 36
    assert sorted(set(e["number"] for e in entries)) == list(range(2, 11))
    assert all(sum(e["number"] == n for e in entries) == 4 for n in range(2, 11))
    for e in entries:
        assert set(e) == {"image_url", "text", "number"}
        assert count_from_caption(e["text"]) == e["number"]
        assert (path.parent / e["image_url"]).is_file()
    again = write_benchmark(tmp_path / "again", seed=3, per_count=4, image_size=48)
    assert again.read_text() == path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


