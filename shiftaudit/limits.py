"""Upper bounds on every size a user controls, checked before the work that would allocate it.

A flag or a file can ask for any number: ``--pairs 1000000``, a class index of 1e20, a crop margin of 5000 px. Each
bound below is far above any real audit and far below what would exhaust a machine, so a typo or a hostile file
ends in one sentence instead of an out-of-memory kill, a hang or a traceback.
"""

from __future__ import annotations

import os
from typing import TypeGuard

from shiftaudit.errors import UsageError

MAX_SIDE = 4096  # px: preprocessed image or crop canvas side (3 x 4096^2 float32 = 192 MiB per image)
MAX_PIXELS = 64 * 1024 * 1024  # pixels of one image after a resize (an aspect-ratio bomb: 1 x 20000 -> 256 x 5.1M)
MAX_SHIFTS = 1 << 20  # shifts in a set: all shifts of 1024 x 1024, offsets held in a few arrays of this length
MAX_PAIRS = 4096  # random pairs per image: sampled mode runs 2 + 2k forwards per image
MAX_CLASSES = 1_000_000  # class indices (class maps, --num-classes): a class list is allocated up to the largest
MAX_IMAGE_BYTES = 256 << 20  # encoded bytes of one image inside a tar shard or a dataset row (a 16k x 16k PNG fits)
MAX_SHARDS = 100_000  # tar shards named by one --data (a brace pattern like {000000..999999} is refused up front)
MAX_SHARD_SAMPLES = 10_000_000  # samples in one shard: their offsets are held in memory
MAX_BATCH_BYTES = 16 << 30  # input bytes of one forward pass (--batch-size x C x H x W x 4)

# Sizes a file declares about itself (headers, footers, graph metadata), checked before memory is spent on them.
MAX_DECODED_PIXELS = 64 * 1024 * 1024  # pixels an image header may declare (8k x 8k; PIL only warns up to 179M)
MAX_TAR_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header, which tarfile reads whole into memory
MAX_TAR_HEADER_CHAIN = 64  # extension headers before one member (tarfile reads each chain recursively)
MAX_FILE_ROWS = MAX_SHARD_SAMPLES  # rows of one parquet file: their positions are held in memory, as a shard's samples
MAX_ROW_GROUP_BYTES = 512 << 20  # uncompressed bytes of one parquet column chunk, which pyarrow reads whole
MAX_ONNX_NODES = 10_000  # nodes of an ONNX graph: onnxruntime takes ~0.1 ms a node to create a session (no image
# classifier comes near: an exported ViT-L has ~2,000), and it holds the GIL while it does
MAX_ONNX_CONSTANT_BYTES = 64 << 20  # a tensor an ONNX graph builds from constants alone, or 4x its largest weight


def max_workers() -> int:
    """Decoding worker processes: more than a few per CPU only costs memory and start-up time."""
    return max(64, 4 * (os.cpu_count() or 1))


def is_int(value: object) -> TypeGuard[int]:
    """A real integer: JSON ``true`` is a bool, ``0.9`` and ``1e20`` are floats; none of them is a class index."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_range(value: int, flag: str, low: int, high: int, why: str) -> int:
    """``low <= value <= high`` or one sentence naming the flag, the bound and why it exists."""
    if value < low:
        raise UsageError(f"{flag} must be at least {low}, got {value}.")
    if value > high:
        raise UsageError(f"{flag} {value} is more than the {high:,} allowed ({why}).")
    return value


def gib(nbytes: float) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.0f} MiB"
