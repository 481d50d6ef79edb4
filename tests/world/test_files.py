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




def test_zeroshot_tasks_in_clip_benchmarks_webdataset_layout(tmp_path):
    import tarfile

    import pytest

    from countclip.evaluate import zeroshot_wds
    from countclip.world.files import write_zeroshot_wds
    from countclip.world.scenes import ZEROSHOT_TASKS

    names = write_zeroshot_wds(tmp_path / "zs", seed=4, n=12, image_size=48, templates=5)
    assert names == [f"wds/countworld_{task}" for task in ZEROSHOT_TASKS]
    members = {}
    for name, (task, classes) in zip(names, ZEROSHOT_TASKS.items()):
        folder = tmp_path / "zs" / name
        assert (folder / "test" / "nshards.txt").read_text().strip() == "1"
        assert len((folder / "classnames.txt").read_text().splitlines()) == len(classes)
        templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert len(templates) == 5 and all(t.count("{c}") == 1 for t in templates)
        with tarfile.open(folder / "test" / "0.tar") as tar:
            members[task] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert sorted(members[task])[:2] == ["000000.cls", "000000.png"] and len(members[task]) == 24
    shape, colour = members["shape"], members["colour"]
    assert [shape[k] for k in shape if k.endswith(".png")] == [colour[k] for k in colour if k.endswith(".png")]
    assert "circles" in (tmp_path / "zs" / names[0] / "classnames.txt").read_text()
    write_zeroshot_wds(tmp_path / "again", seed=4, n=12, image_size=48, templates=5)
    assert (tmp_path / "again" / names[0] / "test" / "0.tar").read_bytes() == (tmp_path / "zs" / names[0] / "test" / "0.tar").read_bytes()
    with pytest.raises(ValueError, match="not a CLIP_benchmark webdataset folder"):
        zeroshot_wds(None, None, None, tmp_path)
