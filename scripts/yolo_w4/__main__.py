import sys

from yolo_w4.cli import main

sys.exit(main())
