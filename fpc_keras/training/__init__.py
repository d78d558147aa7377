"""Training, shared by every model of the suite: `train(config)` (run.py) runs the task's session
(classification.py, segmentation.py, video.py, on session.py's base) through its phases (phase.py), with the
optimiser and weight averaging of averaging.py; resume.py decides what a run folder may resume or refit from.

Run folder (`runs/<name>/`): config.yaml (resolved), splits.csv, model_card.json, checkpoints/ (last.keras,
best.keras, state.json), history.csv, model.keras (the selected model), results.json (its test metrics).

- Model selection on the validation split (carved from the training groups): early stopping and the kept
  model follow validation macro-F1; the test split is touched once, at the end.
- Resume: every epoch writes last.keras (with optimizer state) and state.json atomically; rerunning the same
  command continues from the last finished epoch.
- Phase 1 trains with the backbone frozen. With `train.cache_features`, backbone features are computed once per
  image (and per augmented copy, `train.feature_copies`) and stored under a checksum of the backbone weights,
  preprocessing and files (fpc_keras.data.feature_cache), so each head epoch costs a fraction of a second. A
  Slow-only video model's head is fitted on its slow frames' features, computed once per run in memory.
- Phase 2 (`train.finetune_blocks` > 0) fine-tunes the top N backbone blocks from images with augmentation, at
  `train.finetune_learning_rate` (constant or cosine); its checkpoints only replace phase 1's model when
  validation improves, unless `train.finetune_keep: last` ships its last epoch.
- Weight averaging (`train.ema_momentum` > 0): each epoch is validated, and best.keras kept, with the moving
  average of the weights; training (and last.keras) continues on the raw weights.
"""
from .run import train

__all__ = ["train"]
