"""Size vs accuracy of the bundled forest's choices (extra trees, 32 px, full data, one random 20% holdout):
`python -m benchmarks.pretrained_forest_size [DATA]` (about 3 min on 2 cores; docs/pretrained.md has the figures).
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.model_selection import train_test_split

from shared.core.dataset import discover, load_arrays

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/brain-tumor-mri/Training")
files = discover(DATA).train
pixels = load_arrays(files, 32, Path(tempfile.gettempdir()) / "bt-forest-size-cache")
x = pixels.reshape(len(files.labels), -1).astype(np.float32) / 255.0
y = np.asarray(files.labels)
xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=42)
print(len(y), "images", flush=True)
for n, depth, leaf in [(300, None, 1), (150, None, 1), (300, 20, 1), (300, None, 2), (200, None, 2)]:
    t = time.time()
    m = ExtraTreesClassifier(n_estimators=n, max_depth=depth, min_samples_leaf=leaf, random_state=0, n_jobs=1)
    m.fit(xtr, ytr)
    proto = to_onnx(
        m,
        initial_types=[("x", FloatTensorType([None, 1024]))],
        options={id(m): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    size = len(proto.SerializeToString())
    accuracy = m.score(xte, yte)
    print(
        f"trees={n} depth={depth} leaf={leaf}: {size / 1e6:.1f} MB, holdout acc {accuracy:.4f} "
        f"({time.time() - t:.0f}s)",
        flush=True,
    )
