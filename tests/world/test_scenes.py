
import numpy as np
import pytest

from countclip.numbers import count_from_caption, parse_caption
from countclip.world.scenes import PLURALS, SHAPES, caption, render, sample_scene


def test_same_seed_same_world():
    a = [sample_scene(np.random.default_rng(5), n) for n in range(1, 11)]
    b = [sample_scene(np.random.default_rng(5), n) for n in range(1, 11)]
    assert a == b
    assert np.array_equal(render(a[3], 64), render(b[3], 64))
    assert a != [sample_scene(np.random.default_rng(6), n) for n in range(1, 11)]


@pytest.mark.parametrize("count", range(1, 11))
def test_scenes_hold_the_count_without_overlap(count):
    rng = np.random.default_rng(count)
    for _ in range(20):
        scene = sample_scene(rng, count, distractors=2)
        assert scene.count == count and len(scene.distractor_boxes) == 2
        boxes = np.array(scene.boxes + scene.distractor_boxes)
        assert (boxes >= 0).all() and (boxes <= 1).all()
        centres, radii = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2] - boxes[:, 0]) / 2
        for i in range(len(boxes)):
            for j in range(i):
                assert np.hypot(*(centres[i] - centres[j])) > radii[i] + radii[j]


def test_rendered_objects_are_visible_in_their_boxes():
    scene = sample_scene(np.random.default_rng(0), 4)
    pixels = render(scene, 64).astype(int)
    for x0, y0, x1, y1 in scene.boxes:
        cx, cy = int((x0 + x1) / 2 * 64), int((y0 + y1) / 2 * 64)
        from countclip.world.scenes import OBJECT_COLOURS

        assert np.abs(pixels[cy, cx] - OBJECT_COLOURS[scene.colour]).sum() < 10


def test_captions_state_the_true_count_or_none():
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = sample_scene(rng, int(rng.integers(2, 11)))
        text = caption(scene, rng, with_count=True)
        parsed = parse_caption(text)
        assert parsed is not None and parsed.count == scene.count, text
        assert parsed.noun == PLURALS[scene.shape] or PLURALS[scene.shape] in text
        assert count_from_caption(caption(scene, rng, with_count=False)) is None
    with pytest.raises(ValueError, match="2..10"):
        caption(sample_scene(rng, 1), rng, with_count=True)
    with pytest.raises(ValueError, match="1..10"):
        sample_scene(rng, 11)


def test_captions_are_diverse():
    rng = np.random.default_rng(2)
    contents = set()
    for _ in range(2000):
        scene = sample_scene(rng, 5)
        contents.add(caption(scene, rng, with_count=True))
    assert len(contents) > 1800  # collisions are rare: count-only negatives stay rare in a batch
    assert {s for s in SHAPES} == {sample_scene(rng, 2).shape for _ in range(400)}




def test_zeroshot_prompts_name_their_class():
    from countclip.world.scenes import ZEROSHOT_TASKS, zeroshot_prompts

    for task, classes in ZEROSHOT_TASKS.items():
        for value in classes:
            prompts = zeroshot_prompts(task, value, n=8)
            word = PLURALS[value] if task == "shape" else value
            assert all(word in p.split() for p in prompts), (task, value, prompts)
            assert all(count_from_caption(p) is None for p in prompts)
    with pytest.raises(ValueError, match="unknown zero-shot class"):
        zeroshot_prompts("shape", "blob")
