"""What `streamd eval` prints and writes: a table per subset, the temporal comparison's verdict, contact sheets,
each model's summary over the subsets, and strict JSON."""
from __future__ import annotations

import math

import cv2
import numpy as np

from streamd.tools.evaluate.metrics import GRAY, TRUTH
from streamd.tools.evaluate.scoring import (GOAL_AUC_REBALANCED_DIFF, GOAL_CDC_RATIO, GOAL_COLORFULNESS_PCT,
                                            GOAL_WARP_CHANGE_PCT, TEMPORAL)


SHEET_HEIGHT = 256
COLUMNS = [("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("colorfulness", "CF", "{:.2f}"),
           ("colorfulness_ratio", "CF ratio", "{:.3f}"), ("cast", "cast", "{:.2f}"), ("auc", "AuC", "{:.2f}"),
           ("auc_rebalanced", "AuC rebal", "{:.2f}"), ("ciede2000", "CIEDE2000", "{:.2f}"), ("cdc", "CDC", "{:.5f}"),
           ("delta_psnr", "dPSNR", "{:+.2f}"), ("delta_auc_rebalanced", "dAuC rebal", "{:+.2f}")]
VIDEO_COLUMNS = [c for c in COLUMNS if c[0] in ("psnr", "ssim", "colorfulness_ratio", "cast", "auc_rebalanced", "cdc")] + [
    ("warp_error", "warp error", "{:.2e}")]
SUMMARY_COLUMNS = [("delta_psnr", "PSNR vs gray", "{:+.2f} dB"), ("cast", "cast", "{:.2f}"),
                   ("gray_cast", "gray's cast", "{:.2f}"), ("cast_ratio", "cast / gray's", "{:.2f}x"),
                   ("delta_auc_rebalanced", "AuC rebal vs gray", "{:+.2f}"),
                   ("colorfulness_ratio", "CF / truth", "{:.2f}")]


def format_table(rows: dict[str, dict[str, float]], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """A text table, one line per method; a column no row has is left out, a missing value reads '-'."""
    columns = [c for c in columns if any(c[0] in row for row in rows.values())]
    width = max(len(label) for label in rows) + 2
    lines = [" " * width + "".join(f"{title:>11}" for _, title, _ in columns)]
    for label, row in rows.items():
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in columns]
        lines.append(f"{label:<{width}}" + "".join(f"{cell:>11}" for cell in cells))
    return "\n".join(lines)


def format_comparison(label: str, c: dict) -> str:
    """Two lines: the verdict on the goals, then the numbers."""
    missed = [name for name, met in c["goals"].items() if not met]
    verdict = "meets all goals" if not missed else f"MISSES {', '.join(missed)}"
    return (f"{label}, temporal vs per-frame: {verdict}\n"
            f"  warp error {c['warp_error_change_pct']:+.1f}% (goal <= {GOAL_WARP_CHANGE_PCT:+.0f}%; "
            f"the part above gray's {c['warp_error_excess_change_pct']:+.1f}%), "
            f"CDC {c['cdc_ratio_per_frame']:.2f}x -> {c['cdc_ratio_temporal']:.2f}x the truth's "
            f"(goal <= {GOAL_CDC_RATIO:g}x), AuC rebal {c['auc_rebalanced_diff']:+.2f} points "
            f"(goal >= {GOAL_AUC_REBALANCED_DIFF:+g}), colourfulness {c['colorfulness_diff_pct']:+.1f}% "
            f"(goal >= {GOAL_COLORFULNESS_PCT:+g}%)")


def contact_sheet(samples: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> np.ndarray:
    """RGB sheet: one row per sample, tiles (gray | ours ... | truth), each SHEET_HEIGHT high and labelled."""
    rows = []
    for outputs, truth in samples:
        tiles = []
        for label, image in [*outputs.items(), (TRUTH, truth)]:
            width = max(1, round(image.shape[1] * SHEET_HEIGHT / image.shape[0]))
            tile = cv2.resize(image, (width, SHEET_HEIGHT), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def json_safe(value):
    """Non-finite floats become null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary(results: dict[str, dict], label: str) -> dict[str, dict[str, float]]:
    """One model's headline numbers on every subset, beside the gray baseline's. On videos, the temporal
    mode's: what a camera of the daemon shows."""
    rows = {}
    for name, result in results.items():
        row = result["rows"].get(label + TEMPORAL if result["kind"] == "videos" else label)
        if row is not None:
            rows[name] = {**{key: row[key] for key, _, _ in SUMMARY_COLUMNS if key in row},
                          "gray_cast": result["rows"][GRAY]["cast"]}
    return rows


def format_summary(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one line per subset."""
    lines = ["| subset | " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |",
             "| --- |" + " --- |" * len(SUMMARY_COLUMNS)]
    for name, row in rows.items():
        cells = [fmt.format(row[key]) if key in row and math.isfinite(row[key]) else "-"
                 for key, _, fmt in SUMMARY_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
