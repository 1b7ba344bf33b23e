"""Calibrate a bundle on held-out identities, or a score file: what `python -m calibration` runs.

`calibrate_bundle` embeds identities the model never trained on (`calibration.protocol`),
splits them into dev (chooses the threshold, fits the confidence) and eval (reports how
both hold up), and returns calibration.json's content; `calibrate_scores` does the same
on comparisons read from a score file. Neither writes anything.
"""

from dataclasses import dataclass

import numpy as np

from calibration import fit
from calibration.confidence import DEFAULT_CONFIDENCE
from calibration.pairs import pair_comparisons, template_comparisons
from calibration.protocol import MIN_IDENTITIES, CalibrationError, held_out_sample, split_dev_eval
from verifier.core.fusion import DEFAULT_RULE


def _quiet(message):
    pass


@dataclass(frozen=True)
class Calibrated:
    """A calibration and the comparisons behind it.

    calibration: bundle mode, calibration.json's keys; score mode, the same figures for the file.
    splits: [(label, Comparisons or None, threshold, linestyle)], what `report.write_report` draws.
    """

    source: str
    calibration: dict
    splits: list
    bundle_id: str | None = None


@dataclass(frozen=True)
class _Settings:
    """How the threshold and confidence are chosen and the intervals drawn (recorded in the protocol text)."""

    confidence: str = DEFAULT_CONFIDENCE
    prior: float = 0.5
    n_bootstrap: int = 1000
    seed: int = 0
    impostors: str = "all"  # calibration.pairs.IMPOSTOR_KINDS: which impostors the threshold is chosen on

    def calibrate(self, dev, evaluation, policy, where=""):
        return fit.calibrate(dev, evaluation, policy, confidence=self.confidence, prior=self.prior,
                             n_bootstrap=self.n_bootstrap, seed=self.seed, where=where, impostors=self.impostors)

    def choice_text(self, policy, has_eval):
        kind = {"all": "", "skilled": " (impostors: skilled forgeries only)",
                "random": " (impostors: other identities' genuine images only)"}[self.impostors]
        return (f"The {policy.spec} policy chose the threshold on dev comparisons{kind} and a {self.confidence} map of "
                f"P(same) (stated under prior {self.prior:g}) was fitted on them"
                + ("; eval comparisons measure both. " if has_eval else ". ")
                + (f"Intervals: 95% percentile bootstrap over {self.n_bootstrap} identity resamples "
                   f"(seed {self.seed})." if self.n_bootstrap else "No bootstrap intervals (--bootstrap 0)."))


def _split_sizes(dev, evaluation, images=None):
    """Genuine, impostor and forgery comparisons (and images, when given) per split."""
    sizes = {}
    for key, fn in (("genuine", lambda c: int((c.label == 1).sum())), ("impostor", lambda c: int((c.label == 0).sum())),
                    ("forgery", lambda c: int(c.forgery.sum()))):
        sizes[key] = {"dev": fn(dev), "eval": None if evaluation is None else fn(evaluation)}
    if images is not None:
        sizes["images"] = images
    return sizes


# ---------------------------------------------------------------- score files

def _scores_splits(comparisons, eval_fraction, seed):
    """(dev, eval or None, identities dict, notes) for a score file."""
    if comparisons.id_a is None:
        if eval_fraction:
            raise CalibrationError("--eval-fraction needs identities to split: add id_a and id_b columns")
        return comparisons, None, None, ["no id_a/id_b columns: calibrated and reported on all scores "
                                         "(dev only, no eval split, no bootstrap intervals)"]
    names = sorted(set(comparisons.id_a.tolist()) | set(comparisons.id_b.tolist()))
    if eval_fraction is None:
        eval_fraction = 0.5 if len(names) >= 2 * MIN_IDENTITIES else 0.0
    dev_names, eval_names = split_dev_eval(names, eval_fraction, seed)
    if not eval_names:
        return comparisons, None, {"dev": dev_names, "eval": []}, [
            f"{len(names)} identities, no eval split: the threshold and confidence are reported on the scores "
            "that chose them (optimistic)"]
    evaluation = comparisons.restrict(eval_names)
    return comparisons.restrict(dev_names), evaluation, {"dev": dev_names, "eval": eval_names}, []


def calibrate_scores(comparisons, policy, *, source, eval_fraction=None, confidence=DEFAULT_CONFIDENCE, prior=0.5,
                     n_bootstrap=1000, seed=0):
    """Threshold and confidence on a score file's comparisons, split by identity when it names them.

    eval_fraction None: 0.5 when the file names at least 4 identities, else 0 (dev only).
    """
    settings = _Settings(confidence, prior, n_bootstrap, seed)
    dev, evaluation, identities, notes = _scores_splits(comparisons, eval_fraction, seed)
    section = settings.calibrate(dev, evaluation, policy)
    split = "dev only" if evaluation is None else f"{len(identities['dev'])} dev and {len(identities['eval'])} " \
                                                  f"eval identities (seed {seed}), cross-split comparisons dropped"
    calibration = {
        "protocol": f"score file {source}: {len(comparisons)} comparisons; {split}. "
                    f"{settings.choice_text(policy, evaluation is not None)}",
        **{key: section[key] for key in ("policy", "threshold", "confidence", "metrics")},
        "sizes": _split_sizes(dev, evaluation),
        "identities": identities,
        "notes": notes,
    }
    splits = [("dev", dev, section["threshold"], "-"), ("eval", evaluation, section["threshold"], "--")]
    return Calibrated(str(source), calibration, splits)


# ---------------------------------------------------------------- bundles

@dataclass(frozen=True)
class _Protocol:
    """How held-out images become comparisons: sampling, and the template (fusion) protocol."""

    max_impostors: int | None = None
    templates_per_subject: int = 3
    fusion: str = DEFAULT_RULE
    seed: int = 0

    def pairs(self, emb, labels, forged, rows, metric):
        if len(rows) == 0:
            return None
        return pair_comparisons(emb[rows], labels[rows], forged[rows], metric,
                                max_impostors=self.max_impostors, seed=self.seed)

    def templates(self, emb, labels, forged, rows, metric):
        if len(rows) == 0:
            return None
        return template_comparisons(emb[rows], labels[rows], forged[rows], metric, k=self.templates_per_subject,
                                    rule=self.fusion, seed=self.seed)


def _protocol_text(why, dev_names, eval_names, sampling, image_note, metric, policy, settings, protocol,
                   has_fusion):
    split = (f"split (seed {settings.seed}) into {len(dev_names)} dev and {len(eval_names)} eval identities"
             if eval_names else "all used as dev (no eval split)")
    fusion = (f" Subject verification: each identity enrolls {protocol.templates_per_subject} images (seeded), "
              f"every other image probes every subject of its split, distances fused by {protocol.fusion}; "
              "calibrated the same way." if has_fusion else "")
    return (f"Open-set: {why}, {split}. Pairs: every genuine pair and {sampling} within each split "
            f"(images: {image_note}), scored with the bundle's {metric} distance. "
            f"{settings.choice_text(policy, bool(eval_names))}{fusion}")


def embed_acquired(bundle_dir, meta, images, log=_quiet):
    """(embeddings of the images acquired, which were acquired): a face profile's images with
    no face found are failures to acquire, left out of every comparison and counted."""
    from verifier.core.acquisition import acquire
    from verifier.core.bundle import load_model
    from verifier.core.embedder import Embedder
    from verifier.core.profiles import Profile

    profile = Profile.from_dict(meta["profile"])
    log(f"embedding {len(images)} images with bundle {meta['bundle_id']}"
        + (f" (detecting and aligning faces: {profile.detector})" if profile.detector else ""))
    acquired = acquire(images, profile)
    if acquired.failed:
        log(f"no face found in {len(acquired.failed)} of {len(images)} images (failures to acquire)")
    if "serving" in meta:  # calibrated on the model that serves
        from verifier.core.scorer import Scorer

        embedder = Scorer.from_bundle(bundle_dir, backend="tflite").embedder
        log(f"embedding through the bundle's serving model {meta['serving']['file']}")
    else:
        embedder = Embedder(load_model(bundle_dir, meta), profile)
    return embedder.embed_batch(acquired.inputs), acquired.acquired


def _failure_to_acquire(acquired, parts):
    """Failures to acquire with their counts: overall, dev and eval (ISO/IEC 19795-1 FTA)."""
    def rate(mask):
        total, failed = int(len(mask)), int((~mask).sum())
        return {"failed": failed, "images": total, "rate": failed / total if total else 0.0}

    return {"all": rate(acquired), "dev": rate(acquired[parts[0]]), "eval": rate(acquired[parts[1]])}


def _fusion(emb, labels, forged, parts, metric, policy, settings, protocol, counts):
    """(section, [dev, eval] template comparisons, note or None), or (None, None, note) saying why there is
    none: too few identities with images to enroll k and probe, or a policy the fused comparisons cannot
    support. `counts`: genuine images per identity name, in label order."""
    k = protocol.templates_per_subject
    enrollable = np.array([n > k for n in counts.values()])
    per_split = [int(enrollable[np.unique(labels[rows])].sum()) for rows in parts if len(rows)]
    if min(per_split) < MIN_IDENTITIES:
        return None, None, (f"no fusion calibration: {min(per_split)} identities of a split have more than {k} "
                            f"images; the template protocol enrolls {k} of a subject's images and probes with the "
                            f"rest, and needs at least {MIN_IDENTITIES} such subjects in each split")
    short = [name for name, ok in zip(counts, enrollable) if not ok]
    note = (f"fusion: {len(short)} identities with {k} or fewer images ({', '.join(short[:5])}) are not enrolled; "
            "their images probe every subject as impostors") if short else None
    scored = [protocol.templates(emb, labels, forged, rows, metric) for rows in parts]
    try:
        section = settings.calibrate(scored[0], scored[1], policy, where="fusion ")
    except CalibrationError as exc:
        return None, None, f"no fusion calibration: {exc.message}"
    return dict(rule=protocol.fusion, templates_per_subject=k, **section), scored, note


def _preflight(labels, forged, parts, policy, protocol, impostors):
    """Refuse what the pair counts cannot support before TensorFlow loads and anything is embedded.

    Counts do not depend on the embeddings, so the pairs are formed on zero vectors here.
    """
    zeros = np.zeros((len(labels), 1))
    for where, rows in zip(("dev", "eval"), parts):
        if len(rows):
            counted = protocol.pairs(zeros, labels, forged, rows, "euclidean").with_impostors(impostors)
            fit.require_both(counted, where)
            if where == "dev":
                fit.check_support(policy, len(counted.genuine), len(counted.impostor), where)


def _rows_by_split(held, rows, dev_names, eval_names):
    """Labels and forgery flags of `rows` of `held`, and which of them are dev and eval."""
    labels, forged = held.labels[rows], held.forged[rows]
    names_of = np.array(held.identities)
    return labels, forged, [np.flatnonzero(np.isin(names_of[labels], part)) for part in (dev_names, eval_names)]


def _sampling_text(protocol, dev, evaluation):
    if protocol.max_impostors is None:
        return "all impostor pairs"
    return (f"a seeded sample (seed {protocol.seed}) of at most {protocol.max_impostors} impostor pairs per split "
            f"(of {dev.sampled_from} dev" + (f" and {evaluation.sampled_from} eval" if evaluation else "")
            + " available)")


def calibrate_bundle(bundle, data, policy, *, spec=None, confidence=DEFAULT_CONFIDENCE, prior=0.5, eval_fraction=0.5,
                     seed=0, max_impostors=None, max_images_per_identity=None, n_bootstrap=1000,
                     templates_per_subject=3, fusion=DEFAULT_RULE, impostors="all", log=_quiet):
    """Calibrate the bundle at directory `bundle` on the identities of `data` (LabelledImages) it never
    trained on; returns calibration.json's content (`Calibrated.calibration`), unwritten.

    spec: how the data was named (recorded); impostors: which impostor comparisons choose the
    threshold (signatures: "skilled" forgeries of the claimed writer, or "random" ones);
    `log` receives one-line progress messages.
    """
    from verifier.core.bundle import read_meta

    if impostors != "all" and not data.forged.any():
        raise CalibrationError(f"--impostors {impostors} needs skilled forgeries (ROOT/<writer>/forged/); "
                               f"{data.name} has none: use --impostors all")
    settings = _Settings(confidence, prior, n_bootstrap, seed, impostors)
    protocol = _Protocol(max_impostors, templates_per_subject, fusion, seed)
    meta = read_meta(bundle)
    names, why, held, rows, image_note = held_out_sample(meta.get("recipe") or {}, data, max_images_per_identity, seed)
    dev_names, eval_names = split_dev_eval(names, eval_fraction, seed)
    labels, forged, parts = _rows_by_split(held, rows, dev_names, eval_names)
    _preflight(labels, forged, parts, policy, protocol, settings.impostors)
    emb, acquired = embed_acquired(bundle, meta, [held.images[i] for i in rows], log)
    # only a profile that detects something can fail to acquire (faces: no face found)
    failure_to_acquire = _failure_to_acquire(acquired, parts) if meta["profile"].get("detector") else None
    labels, forged, parts = _rows_by_split(held, rows[acquired], dev_names, eval_names)
    _preflight(labels, forged, parts, policy, protocol, settings.impostors)
    metric = meta["metric"]
    log(f"scoring pairs of {len(dev_names)} dev and {len(eval_names)} eval identities ({metric} distance)")
    dev, evaluation = (protocol.pairs(emb, labels, forged, part, metric) for part in parts)
    section = settings.calibrate(dev, evaluation, policy)
    # images each identity brings to fusion: after the per-identity cap and the failures to acquire
    kept = {name: int(((labels == k) & ~forged).sum()) for k, name in enumerate(held.identities)}
    fused_section, fused, fusion_note = _fusion(emb, labels, forged, parts, metric, policy, settings, protocol, kept)
    notes = [fusion_note] if fusion_note else []
    if not eval_names:
        notes.append("--eval-fraction 0: the threshold and confidence are reported on the dev comparisons that "
                     "chose them (optimistic); no eval split")
    sampling = _sampling_text(protocol, dev, evaluation)
    sizes = _split_sizes(dev, evaluation, images={"dev": int(len(parts[0])),
                                                 "eval": int(len(parts[1])) if eval_names else None})
    sizes.update(identities={"dev": len(dev_names), "eval": len(eval_names)}, impostor_sampling=sampling,
                 images_per_identity=image_note)
    calibration = {
        "policy": section["policy"], "impostors": impostors, "threshold": section["threshold"], "metric": metric,
        "confidence": section["confidence"], "operating_points": section["operating_points"],
        "metrics": section["metrics"], "sizes": sizes, "failure_to_acquire": failure_to_acquire,
        "identities": {"dev": dev_names, "eval": eval_names},
        "protocol": _protocol_text(why, dev_names, eval_names, sampling, image_note, metric, policy, settings,
                                   protocol, fused_section is not None),
        "data": {"name": data.name, "fingerprint": data.fingerprint, "spec": spec},
        "notes": notes,
    }
    splits = [("pairs dev", dev, section["threshold"], "-"), ("pairs eval", evaluation, section["threshold"], "--")]
    if fused_section:
        calibration["fusion"] = fused_section
        splits += [(f"fusion ({fusion}) dev", fused[0], fused_section["threshold"], ":"),
                   (f"fusion ({fusion}) eval", fused[1], fused_section["threshold"], "-.")]
    return Calibrated(f"bundle {bundle} ({meta['bundle_id']}) on {data.name}", calibration, splits, meta["bundle_id"])
