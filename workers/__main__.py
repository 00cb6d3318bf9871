"""``python -m workers io|cpu|control [celery worker options…]``: same as ``lewis worker``."""

import sys

from lewis_tasks.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
