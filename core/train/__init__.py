"""Training: one loop for every strategy, head and encoder.

How a model is trained (``train_model``):

1. **Data.** The cohort is validated (``core.cohort.load_cohort``). EHR
   preprocessing is fitted on the train split only: the event vocabulary and
   per-code value statistics (``EventVocabulary``), the feature scaler
   (``TabularScaler``); strongly right-skewed non-negative values (laboratory
   values, counts) are read as ``log1p`` first (setting ``ehr_log_skewed``).
   Events after a subject's index time never enter.
2. **Image encoder (stage A, shared by all strategies).** The 2D slice CNN (or
   the 3D MONAI network) is trained once per cohort with an image-only
   discrete-time survival objective on the train split (starting from a
   ``pretrain`` encoder folder when ``image_encoder`` is given), early-stopped on
   validation C-index. The 2D encoder sees the lungs only (``image.lung_mask``,
   with nodules on the chest wall since ``image.lung_close``; see ``core.preprocess.lung``). It is then frozen and its tokens for every subject are
   cached in ``<cohort>/.cache/`` keyed by (cohort fingerprint, encoder config,
   seed, initial weights). Comparing strategies therefore encodes each CT once.
3. **Fusion (stage B).** The strategy, EHR encoders and survival head are
   trained on the cached tokens with AdamW, modality dropout (each modality of a
   subject with both is hidden with probability ``modality_dropout``) and early
   stopping on validation Harrell's C (``core.evaluate.harrell_c``). The image
   path after the encoder (projection, slice position, image pooling and MLP,
   and the head when it is the discrete one) starts from stage A
   (``image.warm_start_path``), and multimodal strategies are image-anchored
   (``image_anchor``: image-only branch + gated strategy, ``core.models.fusion``),
   so every strategy starts from the image-only model.
   ``contrastive`` first aligns the two projections with symmetric InfoNCE
   (step one, early-stopped on validation InfoNCE), then trains the head with
   the aligned parts at a tenth of the learning rate (step two).
   Linear EHR term (``ehr_linear``, models with tabular features): after the
   network is early-stopped, the head's linear term of the scaled features and
   missing indicators is fitted on the train split together with a scale and
   shift of the network's own linear predictor (penalised maximum likelihood,
   ``SurvivalHead.fit_wide``); the validation calibration comes after it.
4. **Model folder.** The saved network holds the full image encoder, so
   ``predict`` and ``explain`` run from voxels (``core.registry``).

Determinism: ``torch.manual_seed``, a seeded generator for shuffling and
``torch.use_deterministic_algorithms(True, warn_only=True)``; the same seed
gives the same weights on the same machine. Devices: ``auto`` (CUDA when
available), ``cpu``, ``cuda``; bf16 autocast on CUDA.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
initialised (gloo on CPU, nccl on CUDA), every trained network is wrapped in
``DistributedDataParallel`` and batches come from a ``DistributedSampler``
(per-rank batch = batch size / world size, so the effective batch is
unchanged). Validation runs on every rank on identical weights; the score is
averaged across ranks so early stopping agrees. Rank 0 writes the model and
the cache.
"""

from __future__ import annotations

from core.train.model import train_model
from core.train.settings import DEFAULTS, Progress

__all__ = ["DEFAULTS", "Progress", "train_model"]
