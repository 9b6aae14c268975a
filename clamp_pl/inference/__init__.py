"""Inference from a run directory or model file: plain torch + numpy + cv2.

No module here imports Lightning, Hydra, OmegaConf, torchmetrics, xtcocotools or wandb (a test checks it; timm,
under open_clip, itself imports wandb when it is installed):
``checkpoint`` (spec + weights -> network), ``estimator`` (``load_model``, ``PoseEstimator``), ``postprocess``
(flip test, decoding, rescoring), ``images`` and ``video`` (folders and videos to result files), ``tracking``,
``detector``, ``onnx`` and ``onnx_backend``, ``smoothing`` (filtered pose tables), ``qc`` (label-free quality
checks), ``progress``.
"""
