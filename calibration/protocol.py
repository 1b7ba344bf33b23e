"""Which identities a calibration may use, and how they split into dev and eval.

Open-set rule: a calibration never scores an identity the model was trained or
early-stopped on. On the bundle's own training data (same fingerprint) only the
identities it held out qualify; on any other data no identity name may be one the
bundle trained or validated on. The held-out identities are then split, seeded, into
a dev part (chooses the threshold, fits the confidence) and an eval part (reports how
both hold up on people the choice never saw).
"""

import math

import numpy as np

from verifier.core.errors import VerifierError

MIN_IDENTITIES = 2  # an impostor comparison needs two identities
AUTO_MAX_COMPARISONS = 50_000  # beyond this the identity bootstrap (x1000 resamples) gets slow


class CalibrationError(VerifierError):
    """The data cannot support the calibration asked for; the message says why and what to do."""

    code = "calibration_refused"


def _listing(names, limit=8):
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def held_out_identities(recipe, data):
    """The identity names of `data` a calibration of this bundle may use, and why those.

    `recipe` is bundle.json's training recipe; `data` a `LabelledImages`.
    """
    if "train_identities" not in recipe:
        raise CalibrationError("bundle.json's recipe does not list the identities the model was trained on, "
                               "so an open-set calibration cannot be guaranteed; retrain with `python -m training`")
    trained = list(recipe.get("train_identities") or [])
    validated = list(recipe.get("validation_identities") or [])
    dataset = recipe.get("dataset") or {}
    if dataset.get("fingerprint") and dataset.get("fingerprint") == data.fingerprint:
        holdout = list(recipe.get("holdout_identities") or [])
        if not holdout:
            raise CalibrationError(
                f"{data.name} is the data this bundle was trained on and it held out no identities "
                "(trained with --holdout-identities 0): calibrating on its training identities would "
                "overstate accuracy; calibrate on a folder of other identities")
        missing = sorted(set(holdout) - set(data.identities))
        if missing:
            raise CalibrationError(f"the bundle's held-out identities are not in {data.name}: {_listing(missing)}")
        return holdout, f"the {len(holdout)} identities held out of training on {data.name}"
    seen = set(trained) | set(validated)
    overlap = [name for name in data.identities if name in seen]
    if overlap:
        raise CalibrationError(
            f"{len(overlap)} {'identity' if len(overlap) == 1 else 'identities'} of {data.name} "
            "were used to train or validate this bundle: "
            f"{_listing(overlap)}. Calibrating on them would overstate accuracy (the model has seen them); "
            "use other identities, or rename the folders if they are different people who share a name")
    return list(data.identities), f"all {len(data.identities)} identities of {data.name} (none seen in training)"


def held_out_sample(recipe, data, max_images_per_identity=None, seed=0):
    """What a calibration of this bundle embeds of `data`: (identity names, why those, those
    identities' LabelledImages, the seeded sample's row indices into it, a note on the sample)."""
    names, why = held_out_identities(recipe, data)
    held = data.subset(names)
    cap, image_note = images_per_identity_cap(list(held.counts().values()), max_images_per_identity)
    return names, why, held, sample_rows(held.labels, held.forged, cap, seed), image_note


def split_dev_eval(names, eval_fraction, seed):
    """Seeded split of identity names into (dev, eval); eval is [] when `eval_fraction` is 0.

    Both parts need at least MIN_IDENTITIES identities; too few for both is refused
    rather than silently reporting on dev data.
    """
    names = list(names)
    if not 0 <= eval_fraction < 1:
        raise CalibrationError(f"--eval-fraction must lie in [0, 1), got {eval_fraction}")
    if len(names) < MIN_IDENTITIES:
        raise CalibrationError(f"only {len(names)} identity ({_listing(names)}): impostor comparisons "
                               f"need at least {MIN_IDENTITIES} identities")
    if eval_fraction == 0:
        return names, []
    if len(names) < 2 * MIN_IDENTITIES:
        raise CalibrationError(
            f"only {len(names)} identities: a dev and an eval split need at least {MIN_IDENTITIES} each "
            f"({2 * MIN_IDENTITIES} in all); add identities, or pass --eval-fraction 0 to calibrate and "
            "report on the same (dev) identities")
    n_eval = min(max(round(eval_fraction * len(names)), MIN_IDENTITIES), len(names) - MIN_IDENTITIES)
    picked = set(np.random.default_rng([seed, 3]).choice(len(names), size=n_eval, replace=False).tolist())
    dev = [name for i, name in enumerate(names) if i not in picked]
    evaluation = [name for i, name in enumerate(names) if i in picked]
    return dev, evaluation


def images_per_identity_cap(counts, requested):
    """How many images per identity to keep (None: all), and a note saying what was done.

    `counts`: genuine images per identity. With no `requested` cap, a cap is chosen only
    when all pairs would exceed AUTO_MAX_COMPARISONS, and the note says so.
    """
    if requested is not None:
        if requested < 2:
            raise CalibrationError("--max-images-per-identity must be at least 2 (a genuine pair needs two images)")
        return requested, f"at most {requested} images per identity (seeded sample)"
    total = sum(counts)
    if total * (total - 1) // 2 <= AUTO_MAX_COMPARISONS:
        return None, "all images"
    cap = max(2, int(math.sqrt(2 * AUTO_MAX_COMPARISONS) // len(counts)))
    return cap, (f"at most {cap} images per identity (seeded sample, chosen automatically: all {total} images "
                 f"would make {total * (total - 1) // 2:,} comparisons; set --max-images-per-identity)")


def sample_rows(labels, forged, cap, seed):
    """Row indices keeping at most `cap` genuine images per identity (seeded) and all forgeries."""
    rows = np.arange(len(labels))
    if cap is None:
        return rows
    rng = np.random.default_rng([seed, 5])
    keep = [rows[forged]]
    for identity in np.unique(labels):
        own = rows[(labels == identity) & ~forged]
        keep.append(own if len(own) <= cap else rng.choice(own, size=cap, replace=False))
    return np.sort(np.concatenate(keep))
