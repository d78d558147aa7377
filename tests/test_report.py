"""The HTML report of the tiny trained model beside the shipped models: every paper's table, a page per run, and a
headless-Chromium rendering without broken images or console errors."""
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from fpc_keras.cli import main
from fpc_keras.io import read_json
from fpc_keras.report import fmt, shipped_latency_points, shipped_models
from fpc_keras.report.papers import ABDOMINAL_TEST


def test_report_has_every_paper_table_and_a_page_per_run(trained, exported, tmp_path):
    out = tmp_path / "report" / "index.html"
    store = out.parent / "cv" / "tiny_cv5_quantisation"
    store.mkdir(parents=True)  # a cross-validation kept beside the report, as `--folds` writes it
    (store / "pooled.md").write_text("| model | top-1 % |\n|---|---|\n| float | 73.90 [70.47, 77.49] |\n"
                                     "| **int8 <chosen>** | 73.08 |\n")
    assert main(["report", "--runs", str(trained["run"].parent), "--out", str(out), "--models",
                 str(REPO / "tflite" / "models")]) == 0
    page = out.read_text()
    for shipped in ("abdominal_vgg16_frozen (int8)", "hc18_fetalnet (int8)", "pocus_slowfast (int8)"):
        assert f"shipped tflite/models/{shipped}" in page, shipped  # beside the papers with no local run
    pocus = read_json(REPO / "tflite" / "models" / "pocus_slowfast" / "model_card.json")["metrics"]["cv"]["top1"]
    assert fmt(pocus) in page.split("shipped tflite/models/pocus_slowfast")[1].split("</tr>")[0]  # as video top-1
    assert {p["run"] for p in shipped_latency_points(shipped_models(REPO / "tflite" / "models"))} == {
        f"shipped {path.parent.name}" for path in (REPO / "tflite" / "models").glob("*/model_card.json")}
    assert "No run of this model yet" not in page  # the tiny run is paper 1's; the shipped models cover 2-4
    assert "floor: EfficientNet-Lite0 fine-tuned, 18 epochs (issue 27)" in page  # beside paper 1
    assert "floor: Li et al. 2021, frozen ImageNet CNN + PCA + kNN" in page and ABDOMINAL_TEST in page
    assert "latency against dice" in page  # the shipped segmenter's point
    assert "<h3>tiny_cv5_quantisation: pooled</h3>" in page
    assert "<tr><th>model</th><th>top-1 %</th></tr>" in page and "<td>73.90 [70.47, 77.49]</td>" in page
    assert "<td><b>int8 &lt;chosen&gt;</b></td>" in page and "<td>---</td>" not in page
    for paper in ("efficientnet_attention", "frozen_features", "fetalnet", "slowfast"):
        assert f'data-paper="{paper}"' in page
    assert 'href="runs/tiny.html"' in page and "latency against top1" in page
    run_page = (out.parent / "runs" / "tiny.html").read_text()
    for figure in ("confusion matrix", "reliability diagram", "learning curves", "Grad-CAM per class"):
        assert f'alt="{figure} of tiny"' in run_page, figure
    assert "int8" in run_page and "model_card.json" in run_page and "tensorflow" in run_page
    assert "top1 on validation (choose here)" in run_page  # exports compared where a variant is chosen
    assert "int8 (bias-corrected, chosen on validation)" in run_page  # the only quantised export
    assert "Quantised variant chosen: int8, on the validation split" in run_page
    assert "<td>1.000 / 1.000</td>" in run_page  # fp32's fidelity


def _chromium() -> str:
    """Debian's chromium, installed here when absent and possible (root, apt); else the test is skipped."""
    from fpc_keras.report.browser import find_browser

    if find_browser() is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium and it cannot be installed here (needs root and apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) is needed to drive Chromium")
    return browser


def test_report_renders_in_headless_chromium(trained, exported, tmp_path):
    _chromium()
    from fpc_keras.report.browser import render

    out = tmp_path / "report" / "index.html"
    assert main(["report", "--runs", str(trained["run"].parent), "--out", str(out), "--models",
                 str(REPO / "tflite" / "models")]) == 0
    facts = render(out, tmp_path / "index.png")
    assert facts["console_errors"] == [] and facts["broken"] == []
    assert facts["papers"] == ["efficientnet_attention", "frozen_features", "fetalnet", "slowfast"]
    assert all(facts["measured_rows"]) and facts["no_run_notes"] == 0, facts  # the tiny run + the shipped models
    shot = np.asarray(Image.open(tmp_path / "index.png").convert("L"))
    assert shot.shape[1] == 1280 and shot.std() > 10  # a rendered page, not a blank one
    run_facts = render(out.parent / "runs" / "tiny.html")
    assert run_facts["console_errors"] == [] and run_facts["broken"] == [] and run_facts["images"] >= 4
    broken = out.parent / "broken.html"
    broken.write_text('<html><body><img alt="x" src="data:image/png;base64,AAAA"><script>console.error("boom")'
                      '</script></body></html>')
    bad = render(broken)  # the check can fail: a broken image and a console error are seen
    assert bad["broken"] == ["x"] and any("boom" in e for e in bad["console_errors"])
