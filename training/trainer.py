"""The training loop: a custom tf.function step over the tf.data pipeline, a validation
EER at the end of every epoch, early stopping that restores the best weights, and a
checkpoint after every epoch from which `resume` continues.

The loss is applied to one tower; the "twin" is the same weights applied to both
sides of every pair or triplet, so one tower is all the bundle stores.
"""

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from calibration.metrics import eer
from calibration.pairs import pair_comparisons
from training import losses
from training.augment import augmentation_for
from training.pipeline import training_batches
from training.samplers import PairSampler, PKSampler
from training.towers import PRETRAINED, build_tower, with_flip_average
from verifier.core.embedder import Embedder
from verifier.core.files import replace_with, write_json_atomic
from verifier.core.errors import VerifierError

LOSSES = ("contrastive", "triplet", "npair", "cosface")
MINING = tuple(losses.TRIPLET_MINING)
DEFAULT_MINING = "batch-all"
# Per-loss defaults, each the best measured for that loss on held-out ORL identities
# (bench/accuracy.py): augmentation and a 128-d embedding helped cosface (2,000 steps) and
# hurt the others.
DEFAULT_MARGIN = {"contrastive": 1.0, "triplet": 0.2, "npair": None, "cosface": 0.35}
DEFAULT_EMBEDDING = {"contrastive": 64, "triplet": 64, "npair": 64, "cosface": 128}
DEFAULT_AUGMENT = {"contrastive": "none", "triplet": "none", "npair": "none", "cosface": "robust"}
DEFAULT_EPOCHS = {"contrastive": 10, "triplet": 10, "npair": 10, "cosface": 20}
PRETRAINED_EPOCHS = 0  # fine-tuning epochs for a pretrained tower (0: as it is; see bench/accuracy.py)


class TrainingError(VerifierError):
    """A training request that cannot be carried out as asked (e.g. a mismatched resume)."""

    code = "training_error"


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
    `mining` only applies to triplet.
    """

    loss: str = "cosface"
    mining: str | None = DEFAULT_MINING
    margin: float | None = None  # None: the loss's default (DEFAULT_MARGIN)
    soft_margin: bool = False
    temperature: float = 0.2  # npair only
    scale: float = 30.0  # cosface only: inverse softmax temperature
    tower: str = "small"
    trainable_stages: int = 0  # pretrained towers: how many of the last backbone stages may change
    embedding_size: int | None = None  # None: DEFAULT_EMBEDDING[loss] (pretrained towers: their own)
    dropout: float = 0.5
    epochs: int | None = None  # None: DEFAULT_EPOCHS[loss]
    steps_per_epoch: int = 100
    batch_p: int = 16
    batch_k: int = 4
    patience: int = 8
    learning_rate: float | None = None  # None: 2e-3 from scratch, 1e-4 fine-tuning a pretrained tower
    weight_decay: float = 1e-4
    augment: str | None = None  # None: DEFAULT_AUGMENT[loss]
    flip_tta: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}")
        if self.loss != "triplet":
            self.mining = None
        if self.margin is None:
            self.margin = DEFAULT_MARGIN[self.loss]
        if self.augment is None:
            self.augment = DEFAULT_AUGMENT[self.loss]
        if self.epochs is None:
            self.epochs = PRETRAINED_EPOCHS if self.tower in PRETRAINED else DEFAULT_EPOCHS[self.loss]
        if self.embedding_size is None:
            self.embedding_size = PRETRAINED.get(self.tower, DEFAULT_EMBEDDING[self.loss])
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.tower in PRETRAINED else 2e-3

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


def _loss_function(config, sampler, proxies):
    """emb, targets -> scalar loss, for the configured loss."""
    if config.loss == "cosface":
        return lambda emb, y: losses.cosface_loss(emb, y, proxies, config.scale, config.margin)
    if config.loss == "contrastive":
        n = sampler.n_pairs
        return lambda emb, y: losses.contrastive_loss(emb[:n], emb[n:], y, config.margin)
    if config.loss == "npair":
        return lambda emb, y: losses.npair_loss(emb, sampler.p, sampler.k, config.temperature)
    mine = losses.TRIPLET_MINING[config.mining]
    return lambda emb, y: mine(emb, y, config.margin, config.soft_margin)


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


def train(config, train_images, train_labels, profile, *, val_images=None, val_labels=None,
          val_forged=None, metric="euclidean", checkpoint_dir=None, resume=False, identity=None,
          verbose=True):
    """Train a tower on preprocessed images; returns a TrainResult with the best weights.

    identity: a JSON-able description of the data and split; a resumed run must match it
    (and so must every setting except `epochs` and `patience`: a resumed run may be given
    more epochs, and the cosine schedule then stretches to the new total).
    """
    keras.utils.set_random_seed(config.seed)
    _, train_labels = np.unique(train_labels, return_inverse=True)  # 0..C-1: cosface's proxy columns
    sampler = make_sampler(config, train_labels)
    extra = [tf.Variable(tf.random.normal([config.embedding_size, train_labels.max() + 1], stddev=0.1,
                                          seed=config.seed), name="proxies")] if config.loss == "cosface" else []
    loss_fn = _loss_function(config, sampler, extra[0] if extra else None)
    try:
        tower = build_tower(config.tower, profile.input_shape, config.embedding_size, config.dropout,
                            config.trainable_stages)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    # mirror averaging doubles the serving cost: worth it for a small CNN, not for a pretrained tower
    use_tta = config.flip_tta and profile.allow_flip and config.tower not in PRETRAINED
    model = with_flip_average(tower) if use_tta else tower
    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(total_steps, 1))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    augmentation = augmentation_for(profile, config.augment)
    has_validation = val_images is not None and len(np.unique(val_labels)) >= 2
    embedder = Embedder(model, profile) if has_validation else None

    signature = {"config": {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")},
                 "identity": identity}
    state = {"epoch": 0, "best_eer": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
             "seconds": 0.0, "signature": signature}
    best_weights = tower.get_weights()
    checkpoint = Checkpoint(checkpoint_dir) if checkpoint_dir else None
    if resume and checkpoint and checkpoint.exists():
        saved, best_weights = checkpoint.load(tower, optimizer, extra)
        if saved["signature"] != json.loads(json.dumps(signature)):
            raise TrainingError(f"checkpoint in {checkpoint.dir} was made with other data or settings; "
                                "use the same arguments, another --checkpoint-dir, or drop --resume")
        state = saved
        print(f"resuming from {checkpoint.dir} after epoch {state['epoch']}")
    elif resume:
        print(f"no checkpoint in {checkpoint_dir}: starting from scratch")

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(tower(x, training=True), y)
        variables = tower.trainable_variables + extra
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    pair_labels = sampler.similar() if config.loss == "contrastive" else None
    start = time.perf_counter() - state["seconds"]
    stopped = state["bad_epochs"] >= config.patience and has_validation
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if stopped:
            break
        first = (epoch - 1) * config.steps_per_epoch
        batches = training_batches(train_images, train_labels, sampler, augmentation, profile.normalize,
                                   config.seed, first, first + config.steps_per_epoch, pair_labels)
        bar = keras.utils.Progbar(config.steps_per_epoch, stateful_metrics=["val_eer"],
                                  verbose=1 if verbose else 0)
        if verbose:
            print(f"Epoch {epoch}/{config.epochs}")
        losses_seen = []
        for i, (x, y) in enumerate(batches):
            losses_seen.append(float(train_step(x, y)))
            if i + 1 < config.steps_per_epoch:  # the last update also carries the validation EER
                bar.update(i + 1, [("loss", losses_seen[-1])])
        record = {"epoch": epoch, "loss": float(np.mean(losses_seen))}
        if has_validation:
            val_eer = validation_eer(embedder, val_images, val_labels, metric, val_forged)
            record["val_eer"] = val_eer
            if epoch < first_eligible_epoch(config.epochs):
                pass  # shown, but too early in the schedule to be chosen
            elif state["best_eer"] is None or val_eer <= state["best_eer"]:  # ties: keep the later epoch
                improved = state["best_eer"] is None or val_eer < state["best_eer"]
                state.update(best_eer=val_eer, best_epoch=epoch, bad_epochs=0 if improved else state["bad_epochs"])
                best_weights = tower.get_weights()
            else:
                state["bad_epochs"] += 1
            stopped = state["bad_epochs"] >= config.patience
        else:
            state["best_epoch"] = epoch
            best_weights = tower.get_weights()
        bar.update(config.steps_per_epoch, [("loss", losses_seen[-1])] +
                   ([("val_eer", record["val_eer"])] if has_validation else []))
        state["history"].append(record)
        state["epoch"] = epoch
        state["seconds"] = time.perf_counter() - start
        if checkpoint:
            checkpoint.save(tower, optimizer, best_weights, state, extra)
        if stopped and verbose:
            print(f"early stop: validation EER has not improved for {config.patience} epochs; "
                  f"best {100 * state['best_eer']:.2f}% at epoch {state['best_epoch']}")
    tower.set_weights(best_weights)
    return TrainResult(model=model, tower=tower, best_validation_eer=state["best_eer"],
                       best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                       steps=state["epoch"] * config.steps_per_epoch,
                       training_seconds=round(time.perf_counter() - start, 1), history=state["history"])


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
