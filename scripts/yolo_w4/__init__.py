"""yolo-w4: 4-bit weight post-training quantization of Ultralytics YOLO detectors.

Importing the package sets Ultralytics' offline switches before Ultralytics itself is
imported, so no code path here can download weights, fonts or packages at run time. It also
silences two import-time messages of our libraries that no user can act on (Brevitas: an
optional Hadamard kernel is absent; PyTorch on a CPU-only machine: no CUDA runtime), so job
logs and the command line say only what is ours or actionable.
"""

import logging
import os
import tempfile
import warnings

__version__ = "0.1.0"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "yolo_w4-ultralytics"))

warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
