"""Fine-tuning SAM2 on annotated frames and CT slices (the Polyps-SAM2 recipe).

``finetune(FinetuneConfig(data, output, ...))`` or ``polypsam finetune DATA -o OUT.pt``; see
:mod:`polypsam.finetune.train`. Modules: :mod:`.data` (datasets, masks, box prompts),
:mod:`.embedding_cache` (frozen-encoder features on disk), :mod:`.augment`, :mod:`.metrics`,
:mod:`.train` (loss, trainer), :mod:`.runner` (the run), :mod:`.state` (resume),
:mod:`.sidecar` (JSON sidecar, metrics CSV and plot).
"""

from .runner import finetune
from .train import TRAIN_MODES, FinetuneConfig, FinetuneResult

__all__ = ["TRAIN_MODES", "FinetuneConfig", "FinetuneResult", "finetune"]
