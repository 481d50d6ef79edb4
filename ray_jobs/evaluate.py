"""Ray job: evaluate a checkpoint or a registered model, log it to MLflow and register it.

    ray job submit --working-dir . -- python ray_jobs/evaluate.py --config configs/eval.yaml
"""

import sys

from countclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
