"""Ray job: fine-tune an open_clip model with L_clip + lambda * L_count on a Ray Train cluster.

    ray job submit --working-dir . -- python ray_jobs/train.py --config configs/train_vitb32.yaml
"""

import sys

from countclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
