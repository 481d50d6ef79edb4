"""countclip.world.sets: seeded CountWorld rows, training sets and the zero-shot set."""

import numpy as np

from countclip.numbers import count_from_caption
from countclip.world.scenes import ZEROSHOT_TASKS
from countclip.world.sets import sample_rows, zeroshot_set


def test_rows_are_reproducible_and_state_their_count():
    rows = list(sample_rows(seed=4, n=300, counting_share=0.4))
    assert [r.caption for r in rows] == [r.caption for r in sample_rows(seed=4, n=300, counting_share=0.4)]
    counting = [r for r in rows if r.count]
    assert 0.3 < len(counting) / len(rows) < 0.5
    assert all(2 <= r.count <= 10 and r.count == r.scene.count == count_from_caption(r.caption) for r in counting)
    assert all(count_from_caption(r.caption) is None for r in rows if not r.count)




def test_zeroshot_labels_index_the_task_classes():
    images, labels = zeroshot_set(seed=1, n=50, image_size=32)
    assert images.shape == (50, 32, 32, 3) and set(labels) == set(ZEROSHOT_TASKS)
    for task, classes in ZEROSHOT_TASKS.items():
        assert labels[task].min() >= 0 and labels[task].max() < len(classes)
        assert len(np.unique(labels[task])) > 1
