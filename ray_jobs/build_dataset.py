"""Ray job: build the verified counting dataset.

    ray job submit --working-dir . -- python ray_jobs/build_dataset.py --config configs/laion400m.yaml
"""

import sys

from countclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-dataset", *sys.argv[1:]]))
