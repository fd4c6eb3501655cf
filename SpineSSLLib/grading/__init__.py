"""Disc-degeneration grading (the paper's §3.1, §4.2, Fig. 7): the grading table and its splits,
the classification CNN with transferred convolutional weights, and inference with test-time
augmentation (TTA) in the style of SpineNet V1.

The network is the pretraining trunk (``models.VGGMNet``) on IVD volumes (9×112×224) with new,
randomly initialised fully-connected layers and ``num_classes`` taken from the data.  Transfer
modes (one flag):

``scratch``        everything random, everything trained;
``frozen-random``  random conv weights, frozen; only the fc layers train (the paper's baseline);
``ssl-frozen``     conv weights from a pretraining checkpoint, frozen (the paper's main mode);
``ssl-finetune``   conv weights from a pretraining checkpoint, trained too;
``supervised``     conv weights from a network trained *with labels* on a different, fully
                   annotated cohort (the paper's upper bound), frozen.

Torch is imported lazily so that ``import SpineSSLLib.grading`` stays cheap for the CLI.

Modules: ``data`` (grading table, splits, volumes), ``model`` (transfer modes), ``train``
(``train_grading``), ``infer`` (TTA, ``load_grading_model``, ``grade_volumes``, ``grade_scan``),
``onnx`` (export).  The public names are re-exported here.
"""

from .data import (IVD_SHAPE, PAPER_SPLIT, PAPER_TRAIN_SIZES, GradingSplits, IVDDataset,  # noqa: F401
                   IVDRecord, class_names_from, downscale, load_ivd_arrays, make_grading_splits,
                   nested_train_subsets, read_ivd_table, read_pretrain_splits, scaled_counts, scaled_train_sizes)
from .infer import (GRADES_SCHEMA, GradingModel, TTAConfig, grade_scan, grade_volumes,  # noqa: F401
                    grades_csv_rows, load_grading_model, predict_proba, shift_zero, tta_views)
from .model import (FROZEN_MODES, IVD_HW, MODES, PRETRAINED_MODES, build_grading_model,  # noqa: F401
                    data_dependent_fc_init)
from .onnx import export_onnx, onnx_predict  # noqa: F401
from .train import RECIPES, GradeTrainConfig, TransferConfig, load_config, train_grading  # noqa: F401
