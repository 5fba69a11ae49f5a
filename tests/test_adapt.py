"""`streamd adapt` on a generated fixed camera: fine-tunes, scores on held-back frames, keeps if better."""
from __future__ import annotations

import json

import cv2

from streamd.cli import main
from streamd.source import SyntheticCamera


def test_adapt_beats_the_generic_model_on_its_own_scene(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    camera = SyntheticCamera((320, 240), fps=5, seconds_per_photo=100)  # one scene, slowly panned
    for i in range(30):
        cv2.imwrite(str(store / f"{i:04d}.png"), camera.render(i))
    out, report = tmp_path / "cam.onnx", tmp_path / "report.json"
    code = main(["adapt", str(store), "-o", str(out), "--budget-minutes", "0.3", "--json", str(report)])
    r = json.loads(report.read_text())
    assert r["train_frames"] == 18 and r["held_out_frames"] == 12 and r["steps"] > 0
    assert r["kept"] == (code == 0) == out.exists()
    assert r["kept"] == (r["adapted"]["auc_rebalanced"] > r["generic"]["auc_rebalanced"]
                         and r["adapted"]["psnr"] > r["generic"]["psnr"])
    assert r["adapted"]["auc_rebalanced"] > r["generic"]["auc_rebalanced"]  # the scene's own colours help
    if r["kept"]:
        assert main(["colorize", str(store / "0029.png"), "-o", str(tmp_path / "col"), "--model", str(out)]) == 0
        assert (tmp_path / "col" / "0029.png").exists()


def test_adapt_rejects_too_few_frames(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    cv2.imwrite(str(store / "0.png"), SyntheticCamera((64, 48), 5).render(0))
    assert main(["adapt", str(store), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "too few" in capsys.readouterr().err
