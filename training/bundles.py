"""Train a tower on a data set's identity split and write it as a model bundle.

`train_bundle` is what `python -m training` runs; `fit_tower` (train with early stopping,
then refit on the training and validation identities together) is shared with
bench/accuracy.py, so the benchmark measures the recipe the command line ships.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.metrics import eer
from calibration.pairs import pair_comparisons
from training import face_resnet, imagenet_mobilenet, quantize, sface
from training.baselines import ALIASES, BASELINES
from training.heads import FITTED_HEADS
from training.splits import default_holdout, default_validation, split_identities
from training.trainer import refit, train
from verifier.core.acquisition import acquire_dataset, chip_profile
from verifier.core.bundle import save_bundle
from verifier.core.errors import DatasetError
from verifier.core.faces import detector
from verifier.core.profiles import preprocess_batch

# towers built from published weights -> where those came from (bundle.json's recipe "pretrained")
PROVENANCE = {"face-resnet": face_resnet.provenance, "sface": sface.provenance,
              "face-fusion": lambda: {"face-resnet": face_resnet.provenance(), "sface": sface.provenance()},
              "imagenet-mobilenetv2": imagenet_mobilenet.provenance}

VALIDATION_PER_IDENTITY = 100


def _quiet(message):
    pass


def default_split(identities, holdout, validation, seed):
    """The training split with `python -m training`'s defaults for a holdout or validation of None.

    holdout: a count (drawn with the seed), a list of names, or None; validation: a count or None.
    """
    holdout = default_holdout(len(identities)) if holdout is None else holdout
    n_rest = len(identities) - (len(holdout) if isinstance(holdout, list) else holdout)
    validation = default_validation(n_rest) if validation is None else validation
    return split_identities(identities, holdout, validation, seed)


def acquire_faces(data, profile, log=_quiet):
    """A face profile's images -> their aligned chips, images with no face dropped and counted."""
    if not profile.detector:
        return data
    data, failed = acquire_dataset(data, profile)
    total = len(data) + len(failed)
    log(f"faces: detected and aligned in {len(data)} of {total} images ({profile.detector}); "
        f"{len(failed)} failures to acquire left out")
    if not len(data):
        raise DatasetError(f"no face found in any of the {total} images of {data.name}")
    return data


def paired_identities(data, names):
    """How many of the identities `names` have 2+ genuine images in `data`: those a fitted head or
    a fine-tuning recipe learns from (one image makes no genuine pair)."""
    counts = data.counts()
    return sum(counts[name] >= 2 for name in names)


def usable_split(data, split, k, log=_quiet, batches=True):
    """`split` without the training identities that have fewer than K genuine images (a PK batch
    needs K of each; with `batches` False, as for a fitted head, k is 2: a genuine pair) or the
    validation identities with fewer than 2 (no genuine pair): photos in the wild often hold many
    people with one image. Left-out identities are logged, not trained on; fewer than 2 left to
    train on is a DatasetError."""
    k = k if batches else 2
    need = f"--batch-k {k}" if batches else "2"
    counts = data.counts()
    short = [name for name in split.train if counts[name] < k]
    alone = [name for name in split.validation if counts[name] < 2]
    train = [name for name in split.train if counts[name] >= k]
    if len(train) < 2:
        examples = ", ".join(f"{name} ({counts[name]})" for name in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DatasetError(f"{len(short)} identities have fewer than {need} images: {examples}{more}; "
                           f"{len(train)} left to train on, at least 2 needed: "
                           + ("lower --batch-k, or add images" if batches else "add images"))
    validation = [name for name in split.validation if counts[name] >= 2]
    if len(validation) == 1:  # one identity has no impostor pair: no early stopping
        alone, validation = split.validation, []
    if short or alone:
        log(f"left out: {len(short)} training identities with fewer than {need} images"
            + (f", {len(alone)} validation identities (one image each, or one identity left)" if alone else ""))
    return dataclasses.replace(split, train=train, validation=validation)


def sample_per_identity(data, limit, seed):
    """At most `limit` images per identity (seeded): validation scores all pairs, and
    Fashion-MNIST's 7,000 images per category would make that 10^8 pairs per epoch."""
    rng = np.random.default_rng([seed, 4])
    keep = np.concatenate([np.sort(rng.permutation(np.flatnonzero(data.labels == c))[:limit])
                           for c in range(len(data.identities))])
    return dataclasses.replace(data, images=[data.images[i] for i in keep], labels=data.labels[keep],
                               forged=data.forged[keep])


def training_images(data, forgery_classes):
    """The images and labels training sees: genuine images under their identity's label, and,
    with `forgery_classes`, each writer's skilled forgeries as one more class of their own
    (so that training pushes imitations away from the writer); otherwise forgeries are left out."""
    if forgery_classes:
        return list(data.images), data.labels * 2 + data.forged
    keep = ~data.forged
    return [image for image, ok in zip(data.images, keep) if ok], data.labels[keep]


@dataclass(frozen=True)
class Fitted:
    """The early-stopped run and the model to ship (the refit, or that same run)."""

    training: object  # trainer.TrainResult
    final: object
    refit_identities: list | None  # None: no refit
    baselines: dict = field(default_factory=dict)  # baseline name -> EER on the validation identities

    @property
    def seconds(self):
        return self.training.training_seconds + (self.final.training_seconds if self.refit_identities else 0)


def fit_tower(config, data, split, profile, *, validation=None, refit_after=True, metric="euclidean",
              checkpoint_dir=None, resume=False, identity=None, verbose=True, log=_quiet):
    """Train on the images of `split.train` (`training_images`), early stopping on `validation` (LabelledImages
    of the validation identities, or None); then, when validation chose an epoch and `refit_after`,
    train again from scratch on `split.train + split.validation` for that many epochs.

    `profile` preprocesses the images as they are (chips: `chip_profile`).
    """
    images, labels = training_images(data.subset(split.train), config.forgery_classes)
    inputs = preprocess_batch(images, profile)
    val = {} if validation is None else dict(val_images=preprocess_batch(validation.images, profile),
                                             val_labels=validation.labels, val_forged=validation.forged)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    result = train(config, inputs, labels, profile, metric=metric,
                   checkpoint_dir=checkpoint_dir, resume=resume, identity=identity, verbose=verbose, **val)
    baselines = validation_baselines(inputs, labels, val) if val else {}
    del inputs
    learnt_from_data = result.best_epoch or config.head in FITTED_HEADS  # else the tower as it is: nothing to refit
    if not (refit_after and result.best_validation_eer is not None and learnt_from_data):
        return Fitted(result, result, None, baselines)
    counts = data.counts()  # a refit that trains draws P x K batches: K images of each identity
    k = config.batch_k if result.best_epoch else 2
    names = split.train + [name for name in split.validation if counts[name] >= k]
    images, labels = training_images(data.subset(names), config.forgery_classes)
    how = (f"for the {result.best_epoch} epochs early stopping chose" if result.best_epoch
           else f"fitting the {config.head} head")
    log(f"refit: training again on all {len(names)} training and validation identities, {how} "
        "(--no-refit keeps the early-stopped model)")
    # keyed by the epoch count: a resume whose early stopping chose differently starts a fresh refit
    final = refit(config, result, preprocess_batch(images, profile), labels, profile,
                  checkpoint_dir=checkpoint_dir / f"refit-{result.best_epoch}" if checkpoint_dir else None,
                  resume=resume, identity=identity and {**identity, "refit": True}, verbose=verbose)
    return Fitted(result, final, names, baselines)


def validation_baselines(train_inputs, train_labels, val):
    """EER of the classical baselines that fit this kind of image on the validation identities,
    fitted on the training images (what the model's own validation EER must beat)."""
    names = ["raw-pixels", "pca"] + (["colour-hist"] if train_inputs.shape[-1] == 3 else [])
    return {name: eer(*_pairs(BASELINES[ALIASES.get(name, name)](train_inputs, train_labels, val["val_images"]), val)).value
            for name in names}


def _pairs(embeddings, val):
    pairs = pair_comparisons(embeddings, val["val_labels"], val["val_forged"], "cosine")
    return pairs.genuine, pairs.impostor


def bundle_recipe(config, fitted, data, split, profile, spec=None, profile_reason=None):
    """bundle.json's `recipe`: the settings, data, split and training history behind the model."""
    result, final = fitted.training, fitted.final
    refitted = None if fitted.refit_identities is None else {
        "identities": fitted.refit_identities, "epochs": final.epochs_run, "steps": final.steps,
        "training_seconds": final.training_seconds}
    recipe = dict(
        loss=config.loss, mining=config.mining, margin=config.margin, epochs=result.epochs_run,
        steps=result.steps, seed=config.seed, tower=config.tower, embedding_size=config.embedding_size,
        dataset={"name": data.name, "fingerprint": data.fingerprint, "spec": spec},
        train_identities=split.train, validation_identities=split.validation,
        holdout_identities=split.holdout, best_validation_eer=result.best_validation_eer,
        best_epoch=result.best_epoch, refit=refitted, training_seconds=round(fitted.seconds, 1),
        flip_tta=final.model is not final.tower, head_shrinkage=final.head_shrinkage,
        hyperparameters=config.to_dict(),
        history=result.history, profile_reason=profile_reason or data.profile_reason,
        validation_baselines=fitted.baselines)
    if config.tower in PROVENANCE:
        recipe["pretrained"] = PROVENANCE[config.tower]()
    if profile.detector:
        recipe["face_detector"] = detector.provenance()
    return recipe


@dataclass(frozen=True)
class TrainedBundle:
    """What `train_bundle` wrote, and how the training went."""

    bundle_id: str
    path: Path
    recipe: dict
    fitted: Fitted


def train_bundle(data, config, split, out, *, profile, metric="euclidean", refit_after=True, spec=None,
                 checkpoint_dir=None, resume=False, verbose=True, log=_quiet, profile_reason=None, int8=False):
    """Acquire faces (face profiles), train on `split` with `config`, refit, and save the bundle to `out`.

    data: LabelledImages; spec: how the data was named and profile_reason why `profile` was chosen
    (both recorded in the recipe; the reason defaults to the data's own); checkpoints go to
    `checkpoint_dir` (default OUT/checkpoint); `log` receives one-line progress messages; `int8`
    ships an int8 serving model quantized on training images (`training.quantize`).
    """
    n_identities = len(data.identities)
    photos = data
    data = acquire_faces(data, profile, log)
    batches = not (config.head in FITTED_HEADS and not config.epochs)  # a fitted head draws no batches
    split = usable_split(data, split, config.batch_k, log, batches=batches)
    inputs_profile = chip_profile(profile)
    validation = None
    if split.validation:
        validation = sample_per_identity(data.subset(split.validation), VALIDATION_PER_IDENTITY, config.seed)
    log(f"{data.name}: {n_identities} identities, {len(data)} images; training on {len(split.train)}, "
        f"validating on {len(split.validation)}, holding out {len(split.holdout)}; profile {profile.name}")
    out = Path(out)
    identity = {"dataset": data.fingerprint, "split": [split.train, split.validation, split.holdout],
                "profile": profile.to_dict()}
    fitted = fit_tower(config, data, split, inputs_profile, validation=validation, refit_after=refit_after,
                       metric=metric, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else out / "checkpoint",
                       resume=resume, identity=identity, verbose=verbose, log=log)
    recipe = bundle_recipe(config, fitted, data, split, profile, spec, profile_reason)
    bundle_id = save_bundle(out, fitted.final.model, profile=profile, metric=metric, recipe=recipe)
    if int8:
        representative, check, source = quantize.training_inputs(
            photos, profile, quantize.trained_identities({"recipe": recipe}), quantize.REPRESENTATIVE_IMAGES,
            config.seed)
        bundle_id = quantize.add_int8_serving(out, representative, check, source, log) or bundle_id
    return TrainedBundle(bundle_id, out, recipe, fitted)
