"""yolo-w4: 4-bit weight post-training quantization of Ultralytics YOLO detectors.

Importing the package sets Ultralytics' offline switches before Ultralytics itself is
imported, so no code path here can download weights, fonts or packages at run time.
"""

import os
import tempfile

__version__ = "0.1.0"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "yolo_w4-ultralytics"))
