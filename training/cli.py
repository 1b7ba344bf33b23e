"""`python -m training`: train a Siamese embedding tower and write a model bundle.

    python -m training --data orl --out bundles/orl
    python -m training --data PATH --holdout-identities 0 --loss triplet --seed 0 --out DIR

The work is `training.bundles.train_bundle`'s; this module parses arguments and prints.
Every bad input ends with one line on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from imagesets import load_dataset
from training.augment import LEVELS
from training.bundles import default_split, paired_identities, train_bundle
from training.heads import FITTED_HEADS, HEAD_LAYER, HEADS, LDA_MIN_IDENTITIES
from training.splits import parse_holdout
from training.towers import PRETRAINED, TOWERS, default_tower
from training.trainer import (DEFAULT_DROPOUT, DEFAULT_MINING, FINE_TUNE, FINE_TUNE_MIN_IDENTITIES, LOSSES,
                              MINING, TrainConfig, default_head, pretrained_defaults)
from verifier.core.bundle import METRICS
from verifier.core.errors import DatasetError, VerifierError
from verifier.core.profiles import PROFILES, get_profile

DEFAULTS = TrainConfig()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="orl, fashion-mnist, or a folder ROOT/<identity>/<images> "
                      "(signatures: ROOT/<writer>/genuine|forged/)")
    data.add_argument("--holdout-identities", default=None,
                      help="identities kept out of training entirely (for calibration): a count drawn with "
                           "--seed, or a comma list of names; 0 trains on everything (default: a quarter "
                           "when there are 8 or more identities)")
    data.add_argument("--validation-identities", type=int, default=None,
                      help="identities (not trained on) whose EER drives early stopping "
                           "(default: a tenth of the rest, at least 2; 0 disables early stopping)")
    data.add_argument("--profile", choices=sorted(PROFILES), default=None,
                      help="preprocessing profile (default: chosen from the images and printed: signature for "
                           "the genuine/forged layout, face where a face is found in most sampled images, "
                           "else product or small-colour (colour), product-grey or small-grey (greyscale))")
    data.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    model = p.add_argument_group("model and loss")
    model.add_argument("--loss", choices=LOSSES, default=None,
                       help=f"default: {DEFAULTS.loss}; a pretrained tower fine-tuned by default: {FINE_TUNE['loss']}")
    model.add_argument("--mining", choices=MINING, default=None,
                       help=f"in-batch mining for the triplet loss (default: {DEFAULT_MINING})")
    model.add_argument("--margin", type=float, default=None,
                       help="loss margin (default: 1.0 contrastive, 0.2 triplet, 0.35 cosface (in cosine))")
    model.add_argument("--scale", type=float, default=DEFAULTS.scale,
                       help="cosface: scale of the cosines in the softmax (inverse temperature)")
    model.add_argument("--soft-margin", action="store_true", help="triplet: softplus instead of a hinge")
    model.add_argument("--tower", choices=TOWERS, default=None,
                       help="default: face-fusion (pretrained) for the face profiles, gradients for signatures, "
                            "imagenet-mobilenetv2 (pretrained, frozen, a fitted head) for product and product-grey, "
                            "the same beside k-means patch codes for small-colour, pixel-gradients beside them "
                            "(fixed features, fitted heads) for small-grey, small otherwise")
    model.add_argument("--head", choices=HEADS, default=None,
                       help="the projection head: learnt with the loss, or fitted in closed form from the "
                            f"tower's features by shrinkage LDA (needs {LDA_MIN_IDENTITIES}+ training identities) "
                            "or by whitening how an identity's images vary (2+); no epochs unless --epochs is "
                            "given; default: for imagenet-mobilenetv2 and pixel-gradients lda from "
                            f"{LDA_MIN_IDENTITIES} training identities with 2+ images, else whiten; learnt otherwise")
    model.add_argument("--trainable-stages", type=int, default=None,
                       help="pretrained towers: how many of the backbone's last stages fine-tuning may "
                            f"change (0: frozen backbone, only the projection head learns; default: "
                            f"{DEFAULTS.trainable_stages}, fine-tuning face-resnet {FINE_TUNE['trainable_stages']})")
    model.add_argument("--embedding-size", type=int, default=None,
                       help="default: 128 for cosface and for a fitted head, 64 for the other losses")
    model.add_argument("--dropout", type=float, default=None,
                       help=f"default: {DEFAULT_DROPOUT}; 0.2 for imagenet-mobilenetv2, 0 for pixel-gradients")
    model.add_argument("--metric", choices=METRICS, default="euclidean",
                       help="distance recorded in the bundle (embeddings are L2-normalised)")
    model.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                       help="average the embeddings of an image and its mirror image (default: on for the "
                            "towers trained from scratch, off for the pretrained ones, where it doubles the "
                            "serving cost; never for profiles that forbid flips)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=None,
                     help="default: 20 for cosface, 10 for the other losses, 0 with a fitted head (6 for "
                          "imagenet-mobilenetv2's learnt head); "
                          f"face-resnet: {FINE_TUNE['epochs']} (fine-tuning, with the other settings of the "
                          f"fine-tuning recipe) from {FINE_TUNE_MIN_IDENTITIES} training identities with 2+ "
                          "images, else 0, which writes a bundle of the tower as it is")
    opt.add_argument("--steps-per-epoch", type=int, default=DEFAULTS.steps_per_epoch)
    opt.add_argument("--batch-p", type=int, default=None,
                     help=f"identities per batch (default: {DEFAULTS.batch_p}; fine-tuning face-resnet {FINE_TUNE['batch_p']})")
    opt.add_argument("--batch-k", type=int, default=None,
                     help=f"images per identity per batch (default: {DEFAULTS.batch_k}; fine-tuning face-resnet "
                          f"{FINE_TUNE['batch_k']})")
    opt.add_argument("--learning-rate", type=float, default=None,
                     help="peak learning rate (cosine decay to 0 over all steps); default: 2e-3 from "
                          "scratch, 1e-4 fine-tuning a pretrained tower")
    opt.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay")
    opt.add_argument("--augment", choices=sorted(LEVELS), default=None,
                     help="training augmentation level, per profile (no flips for signatures); default: "
                          "robust for cosface, none for the other losses (what measured best on ORL)")
    opt.add_argument("--no-forgery-classes", dest="forgery_classes", action="store_false",
                     help="signatures: leave the training writers' skilled forgeries out (default: each "
                          "writer's forgeries train as a class of their own, pushed away from the writer)")
    opt.add_argument("--patience", type=int, default=DEFAULTS.patience,
                     help="epochs without a better validation EER before stopping (the best epoch "
                          "is chosen from the second half of the schedule)")
    opt.add_argument("--no-refit", dest="refit", action="store_false",
                     help="keep the early-stopped model instead of training again on the training and "
                          "validation identities together for the epochs early stopping chose")
    opt.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run = p.add_argument_group("output")
    run.add_argument("--out", required=True, help="bundle directory to write")
    run.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUT/checkpoint)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint when there is one")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                     help="ship an int8 serving model quantized on training images, about twice as fast "
                          "(default: on for the pretrained face towers; see training.quantize)")
    return p


RECIPE_SETTINGS = ("loss", "epochs", "trainable_stages", "batch_p", "batch_k")


def _fill_defaults(args, data, split):
    """Settings not given take the recipe's, by how many training identities have 2+ images: for
    a pretrained face tower, fine-tuning or the tower as it is (`pretrained_defaults`); for a
    tower whose head is fitted in closed form, LDA or, with fewer identities, whitening.
    Returns a line saying which, or None for a tower trained from scratch."""
    usable = paired_identities(data, split.train)
    head_line = None
    fitted = default_head(args.tower, usable) if args.head is None else None
    if fitted:
        args.head = fitted
        head_line = (f"{args.tower}: {usable} training identities with 2+ images: "
                     + ("an LDA head, fitted in closed form" if args.head == "lda" else
                        f"fewer than {LDA_MIN_IDENTITIES} for an LDA head: a whitening head, fitted in closed form"))
        if args.loss and not args.epochs:
            head_line += f" (--loss {args.loss} trains only with --epochs N or --head learnt)"
    chosen = pretrained_defaults(usable) if args.tower in PRETRAINED else {}
    for name in RECIPE_SETTINGS:
        if getattr(args, name) is None:  # epochs left None: the loss's or tower's own (TrainConfig)
            setattr(args, name, chosen.get(name, None if name == "epochs" else getattr(DEFAULTS, name)))
    if args.tower not in PRETRAINED:
        return head_line
    side = "at least" if usable >= FINE_TUNE_MIN_IDENTITIES else "fewer than"
    how = (f"fine-tuned for {args.epochs} epochs, {args.loss}, {args.trainable_stages} trainable stages"
           if args.epochs else "the tower as it is (--epochs N fine-tunes it)")
    return f"{args.tower}: {usable} training identities with 2+ images ({side} {FINE_TUNE_MIN_IDENTITIES}): {how}"


def _check_positive(args):
    for name in ("epochs", "steps_per_epoch", "batch_p", "batch_k", "embedding_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            if name == "epochs" and args.epochs == 0 and (args.tower in PRETRAINED or args.head in FITTED_HEADS):
                continue  # a bundle of the pretrained tower as it is, or of its fitted head
            raise DatasetError(f"--{name.replace('_', '-')} must be at least 1"
                               + (" (0 only with a pretrained tower or a fitted head: --head lda or whiten)"
                                  if name == "epochs" else ""))
    if args.batch_p < 2 and args.loss != "contrastive":
        raise DatasetError("--batch-p must be at least 2: in-batch mining needs other identities")
    if args.batch_k < 2:
        raise DatasetError("--batch-k must be at least 2: in-batch mining needs positives")
    if not args.scale > 0:
        raise DatasetError(f"--scale must be positive (the cosface softmax's inverse temperature), got {args.scale}")


def _load(spec, strict):
    data = load_dataset(spec, strict=strict)
    if data.skipped:
        print(f"warning: skipped {len(data.skipped)} unreadable files (first: {data.skipped[0][0]}: "
              f"{data.skipped[0][1]}); --strict makes this an error", file=sys.stderr)
    if len(data.identities) < 2:
        raise DatasetError(f"{spec} has only one identity ({data.identities[0]}): "
                           "verification needs at least 2 (ROOT/<identity>/<images>)")
    return data


def _config(args):
    return TrainConfig(loss=args.loss, mining=args.mining, margin=args.margin, soft_margin=args.soft_margin,
                       scale=args.scale, tower=args.tower, head=args.head, trainable_stages=args.trainable_stages,
                       embedding_size=args.embedding_size, dropout=args.dropout,
                       epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_p=args.batch_p,
                       batch_k=args.batch_k, patience=args.patience, learning_rate=args.learning_rate,
                       weight_decay=args.weight_decay, augment=args.augment, flip_tta=args.flip_tta,
                       forgery_classes=args.forgery_classes, seed=args.seed)


def _wrote(trained):
    recipe = trained.recipe
    best = "n/a" if recipe["best_validation_eer"] is None else f"{100 * recipe['best_validation_eer']:.2f}%"
    how = f", refit on {len(recipe['refit']['identities'])} identities" if recipe["refit"] else ""
    head = recipe["hyperparameters"]["head"]
    if not recipe["epochs"] and head in FITTED_HEADS:
        fitted = recipe["head_shrinkage"]  # {head layer: shrinkage}; two heads beside patch features
        shrinkages = (", ".join(f"{name} {value:g}" for name, value in fitted.items()) if len(fitted) > 1
                      else f"{fitted[HEAD_LAYER]:g}")
        return (f"wrote bundle {trained.bundle_id} to {trained.path} (the head fitted by "
                f"{'LDA' if head == 'lda' else 'whitening'}, shrinkage {shrinkages}, no epochs: "
                f"validation EER {best}{how}, "
                f"{trained.fitted.seconds:.0f} s)")
    if not recipe["epochs"]:
        return f"wrote bundle {trained.bundle_id} to {trained.path} (the pretrained tower as it is: no training)"
    return (f"wrote bundle {trained.bundle_id} to {trained.path} (validation EER {best} at epoch "
            f"{recipe['best_epoch']}, the best of the schedule's second half{how}, {trained.fitted.seconds:.0f} s)")


BASELINE_NAMES = {"raw-pixels": "raw pixels", "pca": "PCA", "colour-hist": "a colour histogram"}


def compared_with_baselines(recipe):
    """A line setting the early-stopped model's validation EER beside the baselines' on the same
    identities, saying so plainly when the recipe does not beat them; None without validation."""
    model, baselines = recipe["best_validation_eer"], recipe["validation_baselines"]
    if model is None or not baselines:
        return None
    figures = ", ".join(f"{BASELINE_NAMES[name]} {100 * value:.2f}%" for name, value in baselines.items())
    best = min(baselines, key=baselines.get)
    line = (f"validation identities: this recipe {100 * model:.2f}% EER against {figures}")
    if model >= baselines[best]:
        return (line + f"\nwarning: on its own validation identities this recipe is no better than "
                f"{BASELINE_NAMES[best]}; try another --profile, --tower or --loss, or more identities")
    return line


def run(args):
    data = _load(args.data, args.strict)
    profile = get_profile(args.profile or data.profile)
    reason = "given with --profile" if args.profile else data.profile_reason
    print(f"profile: {profile.name} ({reason})")
    if args.tower is None:
        args.tower = default_tower(profile.name)
    if args.int8 is None:
        args.int8 = args.tower in PRETRAINED
    split = default_split(data.identities, parse_holdout(args.holdout_identities), args.validation_identities,
                          args.seed)
    recipe_line = _fill_defaults(args, data, split)
    if recipe_line:
        print(recipe_line)
    _check_positive(args)
    trained = train_bundle(data, _config(args), split, args.out, profile=profile, metric=args.metric,
                           refit_after=args.refit, spec=args.data, checkpoint_dir=args.checkpoint_dir,
                           resume=args.resume, verbose=not args.quiet, log=print,
                           profile_reason=reason, int8=args.int8)
    comparison = compared_with_baselines(trained.recipe)
    if comparison:
        print(comparison)
    print(_wrote(trained))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except VerifierError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
