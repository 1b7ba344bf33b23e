"""The training loop: a custom tf.function step over the tf.data pipeline, a validation
EER at the end of every epoch, early stopping that restores the best weights, and a
checkpoint after every epoch from which `resume` continues.

The loss is applied to one tower; the "twin" is the same weights applied to both
sides of every pair or triplet, so one tower is all the bundle stores.
"""

import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from calibration.metrics import eer
from calibration.pairs import pair_comparisons
from training import losses, miners, reducers
from training.augment import augmentation_for
from training.heads import FITTED_EMBEDDING, FITTED_HEADS, HEADS, HeadError, fit_head, fitted_head
from training.patch_codes import PatchCodesError, fit_patch_codes
from training.pipeline import training_batches
from training.samplers import PairSampler, PKSampler
from training.towers import PATCH_FUSIONS, PRETRAINED, build_tower, with_flip_average
from verifier.core.embedder import Embedder
from verifier.core.errors import VerifierError
from verifier.core.files import replace_with, write_json_atomic

LOSSES = ("contrastive", "triplet", "npair", "cosface")
MINING = tuple(miners.TRIPLET_MINERS)  # triplet only: the other losses mine nothing to choose
DEFAULT_MINING = "batch-all"
# Per-loss defaults, each the best measured for that loss on held-out ORL identities
# (bench/accuracy.py): augmentation and a 128-d embedding helped cosface (2,000 steps) and
# hurt the others.
DEFAULT_MARGIN = {"contrastive": 1.0, "triplet": 0.2, "npair": None, "cosface": 0.35}
DEFAULT_EMBEDDING = {"contrastive": 64, "triplet": 64, "npair": 64, "cosface": 128}
DEFAULT_AUGMENT = {"contrastive": "none", "triplet": "none", "npair": "none", "cosface": "robust"}
DEFAULT_EPOCHS = {"contrastive": 10, "triplet": 10, "npair": 10, "cosface": 20}
DEFAULT_DROPOUT = 0.5
# imagenet-mobilenetv2, a frozen pretrained backbone: its head is fitted in closed form
# (training.heads; no epochs), what measured best on unseen grocery classes (README, Products):
# LDA, or with fewer than LDA_MIN_IDENTITIES training identities whitening (`fitted_head`);
# learnt instead (--head learnt): light dropout, mirror images only, a short schedule at a
# higher rate. Mirror averaging (flip_tta) doubles an embedding's cost; the pretrained
# towers go without by default: for the face ResNet it would cost the service its speed goals
# (p50 31 -> 56 ms) for lfw-dev's 719 unseen people's eval EER 4.14% -> 3.81% (README).
# pixel-gradients, fixed features of grey thumbnails: the same fitted head, no dropout.
TOWER_DEFAULTS = {
    "imagenet-mobilenetv2": dict(head="lda", dropout=0.2, augment="flip", epochs=6, learning_rate=3e-3,
                                 flip_tta=False),
    "pixel-gradients": dict(head="lda", dropout=0.0),
    "face-resnet": dict(flip_tta=False),
    "sface": dict(flip_tta=False),
    "face-fusion": dict(flip_tta=False),
}
# a tower beside patch features (training.towers.with_patch_codes) keeps the tower's defaults, with a
# fitted head of FITTED_EMBEDDING dimensions on each side
TOWER_DEFAULTS.update({fused: {**TOWER_DEFAULTS[tower], "embedding_size": 2 * FITTED_EMBEDDING}
                       for fused, tower in PATCH_FUSIONS.items()})
PRETRAINED_EPOCHS = 0  # fine-tuning epochs for a pretrained tower (0: as it is; see bench/accuracy.py)
# Fine-tuning the face ResNet pays with many training people and costs with few (bench/accuracy.py,
# README): lfw-dev folds 1-3, about 600 training people: 3.34% mean EER fine-tuned against 4.34%
# as it is (dlib 3.74%); ORL, 27 people: 0.22% against 0.17%. The line is drawn between, at 200.
FINE_TUNE_MIN_IDENTITIES = 200
FINE_TUNE = {"loss": "triplet", "epochs": 10, "trainable_stages": 3, "batch_p": 32, "batch_k": 2}


def pretrained_defaults(n_identities):
    """The settings a pretrained tower trains with where none is given, for `n_identities`
    training identities with two images or more: FINE_TUNE from FINE_TUNE_MIN_IDENTITIES on,
    else the tower as it is (no epochs)."""
    return dict(FINE_TUNE) if n_identities >= FINE_TUNE_MIN_IDENTITIES else {"epochs": PRETRAINED_EPOCHS}


def default_head(tower, n_identities):
    """The head `tower` takes where none is asked for, for `n_identities` training identities
    with two images or more: the closed-form one that fits them (`training.heads.fitted_head`)
    for a tower whose head is fitted by default, else None (TrainConfig's own)."""
    return fitted_head(n_identities) if TOWER_DEFAULTS.get(tower, {}).get("head") in FITTED_HEADS else None


class TrainingError(VerifierError):
    """A training request that cannot be carried out as asked (e.g. a mismatched resume)."""

    code = "training_error"


class ConfigError(TrainingError, ValueError):
    """Settings that do not fit together (a mining for a loss that mines nothing)."""


@dataclass
class TrainConfig:
    """Every choice that shapes the trained weights (recorded in the bundle's recipe).

    The defaults are the best recipe measured on held-out ORL identities within the time
    budget (bench/accuracy.py, 4 folds): CosFace (scale 30, margin 0.35) over the training
    identities, 128-d embeddings, 2,000 steps of 16 x 4 PK batches with the `robust`
    augmentation (light geometry, side light, occlusion), cosine-decayed AdamW and
    mirror-averaged embeddings, then a refit (`refit`): 5.2% mean EER, against 9.7% for the
    best triplet recipe (batch-all, margin 0.2, no augmentation, 1,000 steps). `margin`,
    `augment`, `epochs` and `embedding_size` left as None take the loss's own default;
    `mining` applies to triplet only (None: DEFAULT_MINING), and is an error for the others.
    """

    loss: str = "cosface"
    mining: str | None = None  # None: DEFAULT_MINING for triplet; the other losses take none
    margin: float | None = None  # None: the loss's default (DEFAULT_MARGIN)
    soft_margin: bool = False
    temperature: float = 0.2  # npair only
    scale: float = 30.0  # cosface only: inverse softmax temperature
    tower: str = "small"
    head: str | None = None  # None: the tower's own (TOWER_DEFAULTS), else "learnt"; "lda", "whiten": training.heads
    trainable_stages: int = 0  # pretrained towers: how many of the last backbone stages may change
    embedding_size: int | None = None  # None: DEFAULT_EMBEDDING[loss] (pretrained towers: their own)
    dropout: float | None = None  # None: the tower's own (TOWER_DEFAULTS), else DEFAULT_DROPOUT
    epochs: int | None = None  # None: DEFAULT_EPOCHS[loss]
    steps_per_epoch: int = 100
    batch_p: int = 16
    batch_k: int = 4
    patience: int = 8
    learning_rate: float | None = None  # None: 2e-3 from scratch, 1e-4 fine-tuning a pretrained tower
    weight_decay: float = 1e-4
    augment: str | None = None  # None: DEFAULT_AUGMENT[loss]
    flip_tta: bool | None = None  # None: the tower's own (TOWER_DEFAULTS), else True
    # signatures: the training writers' skilled forgeries train as classes of their own
    # (no effect on data without forgeries)
    forgery_classes: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}")
        if self.loss != "triplet" and self.mining is not None:
            raise ConfigError(f"mining {self.mining!r} applies to the triplet loss only, not to {self.loss}")
        if self.loss == "triplet":
            self.mining = self.mining or DEFAULT_MINING
            if self.mining not in MINING:
                raise ConfigError(f"unknown mining {self.mining!r}; known: {', '.join(MINING)}")
        if self.margin is None:
            self.margin = DEFAULT_MARGIN[self.loss]
        own = TOWER_DEFAULTS.get(self.tower, {})
        self.head = self.head or own.get("head", "learnt")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; known: {', '.join(HEADS)}")
        if self.dropout is None:
            self.dropout = own.get("dropout", DEFAULT_DROPOUT)
        if self.augment is None:
            self.augment = own.get("augment", DEFAULT_AUGMENT[self.loss])
        if self.flip_tta is None:
            self.flip_tta = own.get("flip_tta", True)
        if self.epochs is None and self.head in FITTED_HEADS:
            self.epochs = 0  # the head is fitted, not trained; --epochs N trains on from it
        if self.epochs is None:
            self.epochs = PRETRAINED_EPOCHS if self.tower in PRETRAINED else own.get("epochs", DEFAULT_EPOCHS[self.loss])
        if self.embedding_size is None:  # a fitted head's size does not depend on a loss it never meets
            own_size = FITTED_EMBEDDING if self.head in FITTED_HEADS else DEFAULT_EMBEDDING[self.loss]
            self.embedding_size = PRETRAINED.get(self.tower, own.get("embedding_size", own_size))
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.tower in PRETRAINED else own.get("learning_rate", 2e-3)

    def to_dict(self):
        return asdict(self)


@dataclass
class TrainResult:
    model: keras.Model  # what the bundle stores (with flip averaging when used)
    tower: keras.Model
    best_validation_eer: float | None
    best_epoch: int
    epochs_run: int
    steps: int
    training_seconds: float
    history: list = field(default_factory=list)
    head_shrinkage: dict | None = None  # {head layer: its covariance shrinkage} of fitted heads (training.heads)


def make_proxies(config, n_classes):
    """cosface's trainable (D, C) proxies, one column per training identity, in a list
    (the variables trained outside the tower); an empty list for the other losses."""
    if config.loss != "cosface":
        return []
    return [tf.Variable(tf.random.normal([config.embedding_size, n_classes], stddev=0.1, seed=config.seed),
                        name="proxies")]


def build_miner(config):
    """What picks each batch's index tuples for the configured loss; None for cosface, which
    scores every embedding against every proxy."""
    if config.loss == "contrastive":
        return miners.SampledPairs()
    if config.loss == "npair":
        return miners.NPairSets(config.batch_k)
    if config.loss == "triplet":
        return miners.TRIPLET_MINERS[config.mining]()
    return None


def build_loss(config, proxies):
    """The configured loss with its reducer; `proxies` is make_proxies' list."""
    if config.loss == "contrastive":
        return losses.ContrastiveLoss(config.margin)
    if config.loss == "npair":
        return losses.NPairLoss(config.temperature)
    if config.loss == "cosface":
        return losses.CosFaceLoss(proxies[0], config.scale, config.margin)
    # batch-all averages over the triplets that still violate the margin, the others over all they mined
    reducer = reducers.mean_over_nonzero if config.mining == "batch-all" else reducers.mean
    return losses.TripletMarginLoss(config.margin, config.soft_margin, reducer=reducer)


def make_sampler(config, labels):
    if config.loss == "contrastive":
        return PairSampler(labels, n_pairs=config.batch_p * config.batch_k // 2, seed=config.seed)
    k = config.batch_k
    if config.loss == "npair" and k % 2:
        raise TrainingError("--loss npair needs an even --batch-k (anchor / positive pairs)")
    return PKSampler(labels, config.batch_p, k, config.seed)


def validation_eer(embedder, images, labels, metric, forged=None):
    """EER over every genuine and impostor pair of the validation identities (calibration's protocol)."""
    forged = np.zeros(len(labels), bool) if forged is None else forged
    pairs = pair_comparisons(embedder.embed_batch(images), labels, forged, metric)
    return eer(pairs.genuine, pairs.impostor).value


class Checkpoint:
    """Files in a directory: last / best weights, optimizer state, loop state (JSON).

    Every file is written next to its target and renamed, so an interrupted write never
    leaves a half checkpoint behind.
    """

    def __init__(self, directory):
        self.dir = Path(directory)

    def exists(self):
        return (self.dir / "state.json").exists()

    def _save_arrays(self, name, arrays):
        replace_with(self.dir / f"{name}.npz", lambda tmp: np.savez(tmp, *arrays))

    def _load_arrays(self, name):
        with np.load(self.dir / f"{name}.npz") as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def save(self, tower, optimizer, best_weights, state, extra=()):
        """`extra`: trained variables outside the tower (cosface's proxies)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save_arrays("last", tower.get_weights())
        self._save_arrays("extra", [v.numpy() for v in extra])
        self._save_arrays("best", best_weights)
        self._save_arrays("optimizer", [v.numpy() for v in optimizer.variables])
        write_json_atomic(self.dir / "state.json", state)

    def load(self, tower, optimizer, extra=()):
        """Restore weights, `extra` variables and optimizer in place; returns (state, best weights)."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
            tower.set_weights(self._load_arrays("last"))
            for variable, value in zip(extra, self._load_arrays("extra"), strict=True):
                variable.assign(value)
            optimizer.build(tower.trainable_variables + list(extra))
            for variable, value in zip(optimizer.variables, self._load_arrays("optimizer"), strict=True):
                variable.assign(value)
            return state, self._load_arrays("best")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise TrainingError(f"checkpoint in {self.dir} is unusable ({exc}); delete it or drop --resume") from None


def first_eligible_epoch(epochs):
    """Early stopping chooses among the epochs of the second half of the schedule only.

    With a few validation identities (ORL: 3) the validation EER is noisy, and in the
    first half, at a high learning rate, it often dips by chance: on ORL that picked
    epochs 4-5 of 10 in three of four folds (held-out EER 7.6 / 14.4 / 17.1%), while
    training to the last epoch gave 4.5 / 11.7 / 13.8%: the held-out EER keeps falling
    as the cosine schedule cools.
    """
    return epochs // 2 + 1


def build_model(config, profile):
    """(tower, model): the tower to train, and what the bundle stores (mirror-averaged when used)."""
    try:
        tower = build_tower(config.tower, profile.input_shape, config.embedding_size, config.dropout,
                            config.trainable_stages)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    use_tta = config.flip_tta and profile.allow_flip
    return tower, with_flip_average(tower) if use_tta else tower


def make_optimizer(config):
    """AdamW on a cosine schedule that decays over the whole run."""
    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(total_steps, 1))
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def make_validator(model, profile, images, labels, forged, metric):
    """() -> the model's validation EER now; None without at least 2 validation identities."""
    if images is None or len(np.unique(labels)) < 2:
        return None
    return partial(validation_eer, Embedder(model, profile), images, labels, metric, forged)


def make_train_step(tower, extra, optimizer, miner, loss):
    """A tf.function taking one optimizer step on a batch (images, targets); returns its loss."""

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            embeddings = tower(x, training=True)
            value = loss(embeddings, y, miner(embeddings, y) if miner else ())
        variables = tower.trainable_variables + extra
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
        return value

    return train_step


def start_state(config, identity, tower, optimizer, extra, checkpoint, resume):
    """(loop state, best weights) to start from: fresh, or the checkpoint's when resuming.

    A resumed run must match the checkpoint's data and every setting except `epochs` and
    `patience` (a resumed run may be given more epochs; the cosine schedule then stretches).
    """
    signature = {"config": {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")},
                 "identity": identity}
    state = {"epoch": 0, "best_eer": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
             "seconds": 0.0, "signature": signature}
    if not resume:
        return state, tower.get_weights()
    if not (checkpoint and checkpoint.exists()):
        print(f"no checkpoint in {checkpoint.dir if checkpoint else None}: starting from scratch")
        return state, tower.get_weights()
    saved, best_weights = checkpoint.load(tower, optimizer, extra)
    if saved["signature"] != json.loads(json.dumps(signature)):
        raise TrainingError(f"checkpoint in {checkpoint.dir} was made with other data or settings; "
                            "use the same arguments, another --checkpoint-dir, or drop --resume")
    print(f"resuming from {checkpoint.dir} after epoch {saved['epoch']}")
    return saved, best_weights


def run_epoch(config, epoch, train_step, batches, validate, verbose):
    """One epoch's optimizer steps on `batches`, then the validation EER (when `validate` is
    given), shown on a progress bar with the epoch's running mean loss (the number the history
    keeps); returns the epoch's history record."""
    bar = keras.utils.Progbar(config.steps_per_epoch, stateful_metrics=["loss", "val_eer"],
                              verbose=1 if verbose else 0)
    if verbose:
        print(f"Epoch {epoch}/{config.epochs}")
    seen = []
    for i, (x, y) in enumerate(batches):
        seen.append(float(train_step(x, y)))
        if i + 1 < config.steps_per_epoch:  # the last update also carries the validation EER
            bar.update(i + 1, [("loss", float(np.mean(seen)))])
    record = {"epoch": epoch, "loss": float(np.mean(seen))}
    shown = [("loss", record["loss"])]
    if validate is not None:
        record["val_eer"] = validate()
        shown.append(("val_eer", record["val_eer"]))
    bar.update(config.steps_per_epoch, shown)
    return record


def judge_epoch(state, epoch, val_eer, epochs):
    """Early stopping's bookkeeping in `state` after `epoch`; True when its weights become the best.

    Without validation (`val_eer` None) every epoch is the best so far. Ties keep the later
    epoch without resetting the count of epochs since the last improvement.
    """
    if val_eer is None:
        state["best_epoch"] = epoch
        return True
    if epoch < first_eligible_epoch(epochs):
        return False  # shown, but too early in the schedule to be chosen
    if state["best_eer"] is None or val_eer <= state["best_eer"]:
        improved = state["best_eer"] is None or val_eer < state["best_eer"]
        state.update(best_eer=val_eer, best_epoch=epoch, bad_epochs=0 if improved else state["bad_epochs"])
        return True
    state["bad_epochs"] += 1
    return False


def train(config, train_images, train_labels, profile, *, val_images=None, val_labels=None,
          val_forged=None, metric="euclidean", checkpoint_dir=None, resume=False, identity=None,
          verbose=True):
    """Train a tower on preprocessed images; returns a TrainResult with the best weights.

    identity: a JSON-able description of the data and split; a resumed run must match it
    (see `start_state`).
    """
    keras.utils.set_random_seed(config.seed)
    _, train_labels = np.unique(train_labels, return_inverse=True)  # 0..C-1: cosface's proxy columns
    extra = make_proxies(config, train_labels.max() + 1)
    miner, loss = build_miner(config), build_loss(config, extra)
    tower, model = build_model(config, profile)
    head_start, head_shrinkage = time.perf_counter(), None
    try:
        fit_patch_codes(tower, train_images, config.seed)  # unsupervised features, fitted before any head
        if config.head in FITTED_HEADS:
            head_shrinkage = fit_head(tower, train_images, train_labels, config.head)
    except (HeadError, PatchCodesError) as exc:
        raise TrainingError(str(exc)) from None
    head_seconds = time.perf_counter() - head_start  # the fit counts as training time
    optimizer = make_optimizer(config)
    augmentation = augmentation_for(profile, config.augment)
    validate = make_validator(model, profile, val_images, val_labels, val_forged, metric)
    checkpoint = Checkpoint(checkpoint_dir) if checkpoint_dir else None
    state, best_weights = start_state(config, identity, tower, optimizer, extra, checkpoint, resume)
    train_step = make_train_step(tower, extra, optimizer, miner, loss)
    sampler = make_sampler(config, train_labels) if config.epochs else None  # no epochs: no batches to draw
    batches = partial(training_batches, train_images, train_labels, sampler, augmentation, profile.normalize,
                      config.seed, pair_labels=sampler.similar() if sampler and config.loss == "contrastive" else None)
    start = time.perf_counter() - state["seconds"] - head_seconds
    stopped = validate is not None and state["bad_epochs"] >= config.patience
    if not config.epochs and validate is not None:
        state["best_eer"] = validate()  # no schedule to choose from: the model as built (and fitted)
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if stopped:
            break
        first = (epoch - 1) * config.steps_per_epoch
        record = run_epoch(config, epoch, train_step, batches(first, first + config.steps_per_epoch), validate,
                           verbose)
        if judge_epoch(state, epoch, record.get("val_eer"), config.epochs):
            best_weights = tower.get_weights()
        stopped = validate is not None and state["bad_epochs"] >= config.patience
        state["history"].append(record)
        state.update(epoch=epoch, seconds=time.perf_counter() - start)
        if checkpoint:
            checkpoint.save(tower, optimizer, best_weights, state, extra)
        if stopped and verbose:
            print(f"early stop: validation EER has not improved for {config.patience} epochs; "
                  f"best {100 * state['best_eer']:.2f}% at epoch {state['best_epoch']}")
    tower.set_weights(best_weights)
    return TrainResult(model=model, tower=tower, best_validation_eer=state["best_eer"],
                       best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                       steps=state["epoch"] * config.steps_per_epoch,
                       training_seconds=round(time.perf_counter() - start, 1), history=state["history"],
                       head_shrinkage=head_shrinkage)


def refit(config, chosen, images, labels, profile, **kwargs):
    """Train again from scratch on the training and validation identities together, for the
    number of epochs early stopping chose in `chosen` (a TrainResult), on a cosine schedule of
    that length, without validation.

    The validation identities decide how long to train, then add to what is learnt: on ORL,
    where 30 people train the model, keeping 3 of them aside costs more held-out EER than
    early stopping saves (bench/accuracy.py: 6.2% at the last epoch, against 5.3% training on
    all 30). `kwargs` go to `train` (checkpoint_dir, resume, identity, verbose).
    """
    return train(replace(config, epochs=chosen.best_epoch), images, labels, profile, **kwargs)
