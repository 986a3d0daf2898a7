"""The classic fixed kernels from the lectures, as HWIO-ready 2-D arrays.

Each constant is a `(3, 3)` float32 NumPy array in cross-correlation form (the
orientation the lectures print them in). `as_kernel` turns one or several into
an HWIO kernel for `functional.conv2d`.
"""

from __future__ import annotations

import numpy as np

# Responds to a bright-to-dark change from left to right (lecture: "learning to detect edges").
VERTICAL_EDGE = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32)
HORIZONTAL_EDGE = VERTICAL_EDGE.T.copy()
# Sobel: the vertical edge detector with the centre row weighted twice.
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()
# Scharr: better rotational symmetry than Sobel (weights 3, 10, 3).
SCHARR_X = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], np.float32)
SCHARR_Y = SCHARR_X.T.copy()
# The line detectors of the lectures.
VERTICAL_LINE = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.float32)
HORIZONTAL_LINE = VERTICAL_LINE.T.copy()
OBLIQUE_LINE = np.eye(3, dtype=np.float32)  # top-left to bottom-right diagonal
ANTI_OBLIQUE_LINE = np.fliplr(OBLIQUE_LINE).copy()

FILTERS: dict[str, np.ndarray] = {
    "vertical_edge": VERTICAL_EDGE,
    "horizontal_edge": HORIZONTAL_EDGE,
    "sobel_x": SOBEL_X,
    "sobel_y": SOBEL_Y,
    "scharr_x": SCHARR_X,
    "scharr_y": SCHARR_Y,
    "vertical_line": VERTICAL_LINE,
    "horizontal_line": HORIZONTAL_LINE,
    "oblique_line": OBLIQUE_LINE,
    "anti_oblique_line": ANTI_OBLIQUE_LINE,
}


def as_kernel(*filters: np.ndarray, in_channels: int = 1) -> np.ndarray:
    """Stacks 2-D filters into an HWIO kernel `(f_h, f_w, in_channels, len(filters))`.

    With `in_channels > 1` every input channel gets the same filter, so the
    response is the filter applied to the channel sum.
    """
    if not filters:
        raise ValueError("as_kernel needs at least one filter")
    shapes = {f.shape for f in filters}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"filters must be 2-D arrays of one shape, got shapes {sorted(shapes)}")
    k = np.stack(filters, axis=-1)[:, :, None, :]  # (f_h, f_w, 1, n_filters)
    return np.repeat(k, in_channels, axis=2).astype(np.float32)
