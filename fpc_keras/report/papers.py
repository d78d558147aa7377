"""What each paper reported, on its own data: the left-hand column of every comparison in the report."""
from __future__ import annotations

BUSI_INDEPENDENT = "BUSI, 167 independent images (3 classes)"
ABDOMINAL_TEST = "abdominal organs, the published 60-image test split (6 classes)"

PAPERS = {
    "efficientnet_attention": {
        "title": "Sivasubramanian et al. 2025: lightweight EfficientNet + attention + 3-layer MLP "
                 "(Phys Eng Sci Med 48:1079-1093)",
        "data": "FETAL_PLANES_DB, 6 planes, official Train/Test split by patient",
        "metrics": {"top1": 0.9625, "top2": 0.9980, "macro_f1": 0.9576},
        # Floors measured by the filer of issue 27 on 167 independent BUSI images (not in this repository or
        # ../shared): what a serious BUSI model must beat.
        "references": {
            "floor: frozen VGG16 + logistic regression (issue 27)": {"top1": 0.838, "data": BUSI_INDEPENDENT},
            "floor: frozen EfficientNet-Lite0 + logistic regression (issue 27)": {"top1": 0.778,
                                                                                  "data": BUSI_INDEPENDENT},
            "floor: EfficientNet-Lite0 fine-tuned, 18 epochs (issue 27)": {"top1": 0.838, "macro_f1": 0.82,
                                                                           "data": BUSI_INDEPENDENT}},
    },
    "frozen_features": {
        "title": "Cheng & Malhi 2017: frozen CaffeNet / VGG16 features, retrained FC layers (J Digit Imaging 30)",
        "doi": "10.1007/s10278-016-9929-2",
        "data": "private abdominal ultrasound, 11 classes, 4,094 train / 1,423 test images, split by study",
        "metrics": {"top1": 0.779, "top2": 0.897},
        "references": {"CaffeNet (paper)": {"top1": 0.773, "top2": 0.904}, "radiologist (paper)": {"top1": 0.717},
                       "floor: Li et al. 2021, frozen ImageNet CNN + PCA + kNN": {"top1": 0.9667,
                                                                                 "data": ABDOMINAL_TEST},
                       "floor: frozen EfficientNet-Lite0 + logistic regression (issue 27)": {"top1": 0.9667,
                                                                                             "data": ABDOMINAL_TEST}},
        "notes": "VGG16 figures in the first row. No genuine CaffeNet weights are installable here: any CaffeNet "
                 "row of ours uses weights the user converted, or none.",
    },
    "fetalnet": {
        "title": "Płotka et al.: FetalNet, multi-task U-Net for fetal biometry (arXiv 2107.06943)",
        "arxiv": "2107.06943",
        "data": "private fetal ultrasound videos (head, abdomen, femur)",
        "metrics": {"iou": 0.905, "dice": 0.962, "plane_accuracy": 0.96, "hc_mad_mm": 2.9},
        "references": {"best published on the HC18 test set": {"dice": 0.9775, "hc_mad_mm": 1.90,
                                                               "data": "HC18 challenge test set (335 images)"}},
        "notes": "Ours: HC18 (heads only, 2-D frames, split by subject). No public fetal video exists here: the "
                 "video model and plane_accuracy (standard head plane vs off-plane frame) are measured on probe "
                 "sweeps synthesised from HC18 test images, not on real video; the paper's plane classes differ.",
    },
    "slowfast": {
        "title": "Cheng et al. 2025: TTESlowFast, video-level echo view classification (Biomed Phys Eng Express)",
        "data": "private transthoracic echocardiography videos",
        "metrics": {"video_top1": 0.9881, "macro_f1": 0.9867},
        "notes": "105 ms per video on an RTX 3060, 186 ms on a Jetson Orin Nano",
    },
}
LOWER_IS_BETTER = {"hc_mad_mm", "hausdorff_mm"}
