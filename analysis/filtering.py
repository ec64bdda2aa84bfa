"""Offline filtering of a video's landmark table: no lag, because every frame is known.

A video analysed after recording has all its frames, so each landmark of each track is cleaned
with centred filters, as DeepLabCut's `filterpredictions` and Anipose do, instead of a causal
filter that lags behind fast motion. Per track and landmark, in frame order:
1. drop points whose confidence is below `min_confidence`, and points that jump: further from
   where their neighbours within `window` frames put them (`expected_positions`) than `max_jump` x
   the track's median box side;
2. fill gaps of at most `max_gap` frames (missed detections included) by linear interpolation;
   a filled point's confidence is 0, which marks it (every point kept has its measured one);
3. smooth each unbroken stretch of at least `window` frames with a Savitzky-Golay filter of
   order `order` ("savgol", the default) or a median filter ("median") of `window` frames.
The result is a second table beside the raw one, which stays as it is.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.signal import medfilt, savgol_filter

from analysis.tables import LandmarkTable, NO_FACE

METHODS = ("savgol", "median")


@dataclass
class FilterOptions:
    min_confidence: float = 0.1
    max_jump: float = 0.15  # of the track's median box side
    max_gap: int = 5  # frames
    window: int = 7  # frames, odd; below 3: no smoothing
    order: int = 2
    method: str = "savgol"


def expected_positions(values: np.ndarray, window: int) -> np.ndarray:
    """Where each of values (T, ...) is expected from its neighbours: the median, over the offsets
    d up to window // 2 for which both exist, of the midpoint of values t - d and t + d. Symmetric
    pairs cancel steady motion, so a moving point is not mistaken for a jump, at the ends of a
    track or beside a gap either; NaN where no pair exists."""
    padded = np.concatenate([np.full((window // 2, *values.shape[1:]), np.nan), values,
                             np.full((window // 2, *values.shape[1:]), np.nan)])
    half, count = window // 2, len(values)
    midpoints = np.stack([(padded[half - d:half - d + count] + padded[half + d:half + d + count]) / 2
                          for d in range(1, half + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no pair: no expectation, NaN
        return np.nanmedian(midpoints, axis=0)


def runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each stretch of True in a 1-d mask, end exclusive."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], valid.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def fill_gaps(series: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """A 1-d series with its NaN gaps of at most max_gap values (between two values) filled by
    linear interpolation, and the mask of the filled ones."""
    missing = np.isnan(series)
    filled = np.zeros_like(missing)
    for start, end in runs(missing):
        if start > 0 and end < len(series) and end - start <= max_gap:
            filled[start:end] = True
    if filled.any():
        known = np.flatnonzero(~missing)
        series = series.copy()
        series[filled] = np.interp(np.flatnonzero(filled), known, series[known])
    return series, filled


def smooth(series: np.ndarray, options: FilterOptions) -> np.ndarray:
    """Each unbroken stretch of at least `window` values smoothed; the rest as it is."""
    out = series.copy()
    if options.window < 3:
        return out
    for start, end in runs(~np.isnan(series)):
        if end - start >= options.window:
            part = series[start:end]
            out[start:end] = (savgol_filter(part, options.window, min(options.order, options.window - 1))
                              if options.method == "savgol" else medfilt(part, options.window))
    return out


def filter_track(points: np.ndarray, confidence: np.ndarray, box_side: float, options: FilterOptions
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One track's landmarks (T, K, 2) and confidences (T, K) on consecutive frames (NaN where the
    face was not found), filtered as the module says."""
    points = np.where((confidence >= options.min_confidence)[..., None], points, np.nan)
    if options.window >= 3 and options.max_jump > 0:
        distance = np.linalg.norm(points - expected_positions(points, options.window), axis=-1)
        points[distance > options.max_jump * box_side] = np.nan  # NaN distance (nothing to compare): kept
    confidence = np.where(np.isnan(points[..., 0]), np.nan, confidence)
    out = np.full_like(points, np.nan)
    for k in range(points.shape[1]):
        x, filled = fill_gaps(points[:, k, 0], options.max_gap)
        y, _ = fill_gaps(points[:, k, 1], options.max_gap)
        out[:, k, 0], out[:, k, 1] = smooth(x, options), smooth(y, options)
        confidence[filled, k] = 0.0
    return out, confidence


def filter_table(table: LandmarkTable, options: FilterOptions) -> LandmarkTable:
    """The filtered table: every track from its first to its last frame, a row where it has any
    landmark; boxes and scores of filled rows interpolated; frames without a face as in `table`."""
    times = table.frame_times
    parts = []
    for face_id in sorted({int(i) for i in table.face_ids if i != NO_FACE}):
        rows = np.flatnonzero(table.face_ids == face_id)
        frames = table.frames[rows]
        span = np.arange(frames.min(), frames.max() + 1)
        at = frames - span[0]
        points = np.full((len(span), *table.points.shape[1:]), np.nan)
        confidence = np.full((len(span), table.points.shape[1]), np.nan)
        boxes, scores = np.full((len(span), 4), np.nan), np.full(len(span), np.nan)
        points[at], confidence[at], boxes[at], scores[at] = (table.points[rows], table.confidence[rows],
                                                            table.boxes[rows], table.scores[rows])
        box_side = float(np.nanmedian(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
        points, confidence = filter_track(points, confidence, box_side, options)
        for j in range(4):
            boxes[:, j] = np.interp(span, frames, table.boxes[rows, j])
        keep = ~np.isnan(points[..., 0]).all(axis=1)
        parts.append((span[keep], np.full(keep.sum(), face_id), boxes[keep], scores[keep], points[keep],
                      confidence[keep]))
    empty_frames = sorted(set(table.frames.tolist()) - {int(f) for part in parts for f in part[0]})
    k = table.points.shape[1]
    parts.append((np.array(empty_frames, dtype=np.int64), np.full(len(empty_frames), NO_FACE),
                  np.full((len(empty_frames), 4), np.nan), np.full(len(empty_frames), np.nan),
                  np.full((len(empty_frames), k, 2), np.nan), np.full((len(empty_frames), k), np.nan)))
    frames, ids, boxes, scores, points, confidence = (np.concatenate([p[i] for p in parts]) for i in range(6))
    order = np.lexsort((ids, frames))
    return LandmarkTable(table.keypoints, frames[order], np.array([times[int(f)] for f in frames[order]]),
                         ids[order], boxes[order], scores[order], points[order], confidence[order])
