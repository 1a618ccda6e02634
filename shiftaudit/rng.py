"""Per-image random draws that do not depend on batching, sharding or resuming.

The paper's random-shift metrics need one random shift per image and k random pairs per image. Drawing them from
a stream shared by the batch would make the numbers depend on the batch size, on how a distributed run shards the
images and on whether an audit was resumed. Instead every draw is a pure function of (seed, stream, image index,
draw number): a SplitMix64 hash, vectorised in numpy. Same seed and data -> same draws, whatever the execution plan.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Stream identifiers keep independent kinds of draws uncorrelated.
STREAM_RANDOM_SHIFT = 1
STREAM_PAIRS = 2
# 3 and 4 were reserved for subset and reference-pair draws that never came; a new stream takes 5 or more, so a
# number once used is never reused for a different kind of draw.
STREAM_SEQUENTIAL_IMAGE = 5  # the sequential gate: which image draw t looks at
STREAM_SEQUENTIAL_SHIFTS = 6  # ... and its two independent shifts
STREAM_TRAIN_ORDER = 7  # fine-tuning: the order of the training images in each epoch
STREAM_TRAIN_VIEW = 8  # ... each training sample's shift, flip and crop
STREAM_HELDOUT = 9  # ... the held-out images' fixed evaluation shifts


def splitmix64(x: npt.ArrayLike) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014): a bijective, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniform_integers(seed: int, stream: int, image_ids: np.ndarray, count: int, high: int) -> np.ndarray:
    """``count`` integers uniform in ``[0, high)`` for each image id: shape ``(len(image_ids), count)``, int64."""
    if high < 1:
        raise ValueError("high must be >= 1")
    ids = np.asarray(image_ids, dtype=np.uint64).reshape(-1, 1)
    draws = np.arange(count, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        key = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _M1 + np.uint64(stream))
        h = splitmix64(key ^ splitmix64(ids * np.uint64(0x100000001B3) + draws))
    # 53 high bits -> a double in [0, 1): exact IEEE arithmetic, identical on every platform.
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return np.minimum((u * high).astype(np.int64), high - 1)
