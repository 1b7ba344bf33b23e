"""Identity splits: holdout (never trained on), validation (early stopping), train.

Splits are by identity, never by image, so that every figure measured on holdout or
validation identities is open-set: the model has not seen those people / writers /
categories. The split is a pure function of the identity list and the seed.
"""

from dataclasses import dataclass

import numpy as np

from verifier.core.errors import DatasetError


@dataclass(frozen=True)
class Split:
    train: list
    validation: list
    holdout: list


def parse_holdout(value):
    """`--holdout-identities`: an int (how many, chosen by seed) or a comma list of names."""
    if value is None:
        return None
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise DatasetError(f"--holdout-identities: expected a count or a comma list of names, got {value!r}")
    return names


def default_holdout(n_identities):
    """A quarter of the identities (ORL: 10 of 40) when the user does not say."""
    return n_identities // 4 if n_identities >= 8 else 0


def default_validation(n_identities):
    """About a tenth of what is left after holdout, at least 2 (an EER needs 2 identities)."""
    return max(2, round(n_identities / 10)) if n_identities >= 6 else 0


def split_identities(identities, holdout, validation, seed, min_train=2):
    """Seeded, disjoint split of `identities` (a list of names).

    holdout: a count (drawn with the seed) or an explicit list of names.
    validation: a count drawn from what holdout leaves.
    """
    identities = list(identities)
    rng = np.random.default_rng([seed, 1])
    if isinstance(holdout, list):
        unknown = sorted(set(holdout) - set(identities))
        if unknown:
            raise DatasetError(f"--holdout-identities names unknown identities: {', '.join(unknown[:5])}")
        held = [name for name in identities if name in set(holdout)]
    else:
        if holdout < 0 or holdout >= len(identities):
            raise DatasetError(f"--holdout-identities {holdout}: the data has only {len(identities)} identities")
        held = sorted(rng.choice(identities, size=holdout, replace=False).tolist(), key=identities.index)
    rest = [name for name in identities if name not in set(held)]
    if validation < 0 or len(rest) - validation < min_train:
        raise DatasetError(
            f"too few identities left to train on: {len(identities)} identities, {len(held)} held out, "
            f"{validation} for validation leaves {len(rest) - validation} (need at least {min_train})")
    if validation == 1:
        raise DatasetError("--validation-identities 1: a validation EER needs at least 2 identities (or use 0)")
    val = sorted(rng.choice(rest, size=validation, replace=False).tolist(), key=identities.index) if validation else []
    train = [name for name in rest if name not in set(val)]
    return Split(train=train, validation=val, holdout=held)
