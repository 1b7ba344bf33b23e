"""Enrollment and subject search: the logic between the routes / CLI and the store.

    enroll    quality-check images, embed the good ones with the current bundle, store them
              in one transaction tagged with the bundle id; failures to enrol are reported
    verify    a probe against a claimed subject's templates, fused with the calibrated rule
    identify  1:N: the top-k subjects by fused distance, "no match" when none passes
    search    similarity search over the catalogue: the k nearest single images (templates),
              each scored as a 1:1 pair verify would score it
    reembed   move templates to the current bundle where images were kept; list the rest

Each service serves one modality (one bundle): a subject of another modality is a 409
`modality_mismatch` to enroll into or verify against, and identify searches only this
modality's subjects. A subject created before modalities existed (NULL) belongs to the
default modality. Templates made by another bundle are never compared with the current one. The fusion rule,
threshold and confidence map come from calibration.json's "fusion" section, fitted with
the same protocol (k enrolled images per held-out identity, the rest as probes), so a
subject decision means what a pair decision means. A search hit is one probe against one
image, a pair: its confidence and decision come from the top-level (pair) calibration, as
/v1/verify's do.
"""

import threading

import numpy as np

from verifier.core.acquisition import acquire
from verifier.core.errors import VerifierError
from verifier.core.fusion import fused_distances
from verifier.core.images import decode_image
from verifier.core.timing import Stopwatch
from verifier.enrollment import quality
from verifier.enrollment.gallery import Gallery
from verifier.enrollment.store import Conflict, NotFound, check_subject_id
from verifier.enrollment.store.base import check_modality

TOP_K = 5  # candidates identify returns unless asked otherwise
MAX_TOP_K = 100  # also the most images a search returns
SEARCH_K = 10  # images search returns unless asked otherwise
SEARCH_RULE = "min"  # the gallery search reads when the bundle has no fusion section (rows are rows)
REEMBED_BATCH = 64
KNOWN_TOLERANCE = 1e-5  # largest coordinate difference at which two embeddings count as one image


def check_top_k(top_k, name="top_k"):
    """identify and search return 1 to MAX_TOP_K answers; anything else (text, a float, a bool) is a 400."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise VerifierError(f"{name} must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}", code="invalid_option")
    return top_k


class FailureToEnrol(VerifierError):
    """No image of an enrollment passed the quality check (422); `failures` says why, per image."""

    status = 422
    code = "failure_to_enrol"

    def __init__(self, message, failures):
        super().__init__(message)
        self.failures = failures


class NotCalibrated(VerifierError):
    """Subject decisions need calibration.json's "fusion" section (503)."""

    status = 503
    code = "not_calibrated"


class EmptyCatalogue(VerifierError):
    """A search found no image of the current bundle (and modality) to rank (404)."""

    status = 404
    code = "empty_catalogue"


class EnrollmentService:
    """Enrollment, subject verify, identify and re-embed for one scorer and one store.

    `modality` names the scorer's modality and `default_modality` the one that subjects stored
    without a modality belong to (the same when omitted). `modality` None: no modality checks
    (a store of one bundle, as before modalities).
    """

    def __init__(self, store, scorer, *, modality=None, default_modality=None):
        self.store = store
        self.scorer = scorer
        self.modality = modality
        self.default_modality = default_modality if default_modality is not None else modality
        self._gallery = None
        self._lock = threading.Lock()

    # -- calibration --------------------------------------------------------------------

    def fusion(self):
        """calibration.json's "fusion" section, or a 503 saying how to get one."""
        calibration = self.scorer.calibration
        if not calibration:
            raise NotCalibrated("the bundle is not calibrated: run `python -m calibration` on it first")
        section = calibration.get("fusion")
        if not section:
            raise NotCalibrated("calibration.json has no \"fusion\" section, so subject decisions have no "
                                "calibrated threshold: recalibrate with template fusion")
        return section

    def rule(self, *, threshold=None, target_fmr=None):
        """The subject decision rule: the fusion section's, or the override (checked by the scorer)."""
        return self.scorer.rule(threshold=threshold, target_fmr=target_fmr, section=self.fusion())

    def gallery(self, rule=None):
        """This worker's cached gallery for the current bundle and fusion rule (or `rule`)."""
        rule = rule or self.fusion()["rule"]
        with self._lock:
            if self._gallery is None or self._gallery.rule != rule:
                self._gallery = Gallery(self.store, self.scorer.bundle_id, self.scorer.metric, rule,
                                        modality=self.modality, default_modality=self.default_modality)
            return self._gallery

    # -- enroll -------------------------------------------------------------------------

    def enroll(self, subject_id, images, *, raw=None, create=False, metadata=None, skip_known=False):
        """Enroll decoded `images` (with their encoded bytes in `raw`, kept if the store keeps images).

        Images failing the quality check are skipped and reported; the rest are stored in
        one transaction. When none passes, nothing is stored and FailureToEnrol is raised.
        With `skip_known`, images whose embedding the subject already holds (the same image
        enrolled again) are left out and listed in "known"; that none is new is no failure.
        """
        check_subject_id(subject_id)
        if not images:
            raise VerifierError("no image to enroll", code="missing_image")
        clock = Stopwatch()
        failures, keep = [], []
        for i, image in enumerate(images):
            reason = quality.check(image, self.scorer.profile)
            if reason:
                failures.append({"index": i, "reason": reason})
            else:
                keep.append(i)
        acquired = acquire([images[i] for i in keep], self.scorer.profile)
        failures += [{"index": keep[j], "reason": "no face found"} for j in acquired.failed]
        failures.sort(key=lambda failure: failure["index"])
        keep = [i for i, ok in zip(keep, acquired.acquired) if ok]
        if not keep:
            raise FailureToEnrol(f"no image could be enrolled: {failures[0]['reason']}"
                                 + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""), failures)
        embeddings = self.scorer.embed_inputs(acquired.inputs)
        known = []
        if skip_known:
            new = self._new_rows(subject_id, embeddings)
            known = sorted(set(keep) - {keep[j] for j in new})
            keep, embeddings = [keep[j] for j in new], embeddings[new]
        ids = []
        if keep:
            kept_raw = [raw[i] for i in keep] if raw is not None else None
            ids = self.store.add_templates(subject_id, self.scorer.bundle_id, embeddings, kept_raw,
                                           create=create, metadata=metadata, modality=self.modality,
                                           default_modality=self.default_modality)
        return {"subject_id": subject_id, "modality": self.modality, "template_ids": ids, "enrolled": len(ids),
                **({"known": known} if skip_known else {}), "failures": failures,
                "failure_to_enrol": len(failures), "model": self.scorer.bundle_id,
                "timings_ms": {"total": clock.total()}}

    def _new_rows(self, subject_id, embeddings):
        """Rows of `embeddings` that neither the subject's current-bundle templates nor an
        earlier row already hold (within float rounding): the same image embeds the same."""
        try:
            _, by_bundle = self.store.subject_templates(subject_id)
        except NotFound:
            by_bundle = {}
        held = by_bundle.get(self.scorer.bundle_id, np.zeros((0, embeddings.shape[1]), np.float32))
        new = []
        for j, row in enumerate(embeddings):
            seen = np.concatenate([held, embeddings[new]])
            if not len(seen) or np.abs(seen - row).max(axis=1).min() > KNOWN_TOLERANCE:
                new.append(j)
        return new

    # -- verify -------------------------------------------------------------------------

    def check_subject(self, subject_id):
        """409 `modality_mismatch` when the subject belongs to another modality (before any image work)."""
        stored = self.store.get_subject(subject_id)["modality"]
        check_modality(subject_id, stored, self.modality, self.default_modality)

    def current_templates(self, subject_id):
        """The subject's templates made by the current bundle; 409 when it is of another modality
        (`modality_mismatch`) or has only templates of other bundles (`bundle_mismatch`)."""
        stored, by_bundle = self.store.subject_templates(subject_id)
        check_modality(subject_id, stored, self.modality, self.default_modality)
        current = by_bundle.get(self.scorer.bundle_id)
        if current is not None:
            return current
        if not by_bundle:
            raise Conflict(f"subject {subject_id!r} has no templates: enroll images first", code="no_templates")
        others = ", ".join(f"{n} made by bundle {bundle}" for bundle, n in
                           sorted((b, len(m)) for b, m in by_bundle.items()))
        raise Conflict(f"subject {subject_id!r} has templates only from another model ({others}); the "
                       f"service runs bundle {self.scorer.bundle_id} and never compares across models: "
                       f"run `python -m verifier reembed` (where images were kept) or re-enroll the subject",
                       code="bundle_mismatch")

    def verify(self, subject_id, probe, *, threshold=None, target_fmr=None):
        """A decoded probe image against the claimed subject, with the calibrated fusion rule."""
        rule = self.rule(threshold=threshold, target_fmr=target_fmr)
        clock = Stopwatch()
        fusion = self.fusion()
        templates = self.current_templates(subject_id)
        clock.lap("load")
        embedding = self.scorer.embed([probe], names=["the probe"])
        clock.lap("embed")
        distance = fused_distances(embedding, templates, self.scorer.metric, fusion["rule"])
        result = rule.decide(distance)[0]
        clock.lap("compare")
        return {**result, "subject_id": subject_id, "modality": self.modality, "model": self.scorer.bundle_id,
                "calibration_id": self.scorer.calibration_id,
                "fusion": {"rule": fusion["rule"], "templates": int(len(templates))},
                "timings_ms": clock.laps}

    # -- identify -----------------------------------------------------------------------

    def identify(self, probe, *, top_k=TOP_K, threshold=None, target_fmr=None):
        """Top-k subjects for a decoded probe; `match` is null when none passes the threshold."""
        check_top_k(top_k)
        rule = self.rule(threshold=threshold, target_fmr=target_fmr)
        clock = Stopwatch()
        gallery = self.gallery()
        embedding = self.scorer.embed([probe], names=["the probe"])[0]
        clock.lap("embed")
        hits = gallery.search(embedding, top_k)
        clock.lap("search")
        decisions = rule.decide([d for _, d, _ in hits]) if hits else []
        candidates = [{"subject_id": subject, "distance": dec["distance"], "decision": dec["decision"],
                       "confidence": dec["confidence"], "templates": count}
                      for (subject, _, count), dec in zip(hits, decisions)]
        match = candidates[0]["subject_id"] if candidates and candidates[0]["decision"] == "same" else None
        snap = gallery.snapshot()
        return {"match": match, "decision": "match" if match else "no_match", "candidates": candidates,
                "threshold": rule.threshold, "policy": rule.policy,
                "fusion": {"rule": gallery.rule},
                "gallery": {"subjects": len(snap.subjects), "templates": int(len(snap.templates))},
                "modality": self.modality, "model": self.scorer.bundle_id, "calibration_id": self.scorer.calibration_id,
                "timings_ms": clock.laps}

    # -- search -------------------------------------------------------------------------

    def search(self, probe, *, k=SEARCH_K, threshold=None, target_fmr=None):
        """The `k` catalogue images (templates) nearest a decoded probe, each with its pair decision.

        The catalogue is the store: its subjects are the items, their templates the images. It
        reads identify's cached gallery (the fusion rule's; only the rows are used). 404
        `empty_catalogue` when no image of this bundle and modality is stored, before embedding.
        """
        check_top_k(k, "k")
        rule = self.scorer.rule(threshold=threshold, target_fmr=target_fmr)  # the pair calibration
        clock = Stopwatch()
        calibration = self.scorer.calibration or {}
        gallery = self.gallery((calibration.get("fusion") or {}).get("rule") or SEARCH_RULE)
        if not len(gallery.snapshot().templates):
            where = f" of modality {self.modality!r}" if self.modality else ""
            raise EmptyCatalogue(f"the catalogue holds no image{where} made by bundle {self.scorer.bundle_id}: "
                                 "add images first (`python -m verifier catalogue add FOLDER`, or "
                                 "POST /v1/subjects/<id>/templates)")
        embedding = self.scorer.embed([probe], names=["the probe"])[0]
        clock.lap("embed")
        hits, snap = gallery.nearest_templates(embedding, k)
        clock.lap("search")
        decisions = rule.decide([distance for _, _, distance in hits]) if hits else []
        results = [{"rank": rank, "subject_id": subject, "template_id": template, "distance": dec["distance"],
                    "confidence": dec["confidence"], "decision": dec["decision"]}
                   for rank, ((subject, template, _), dec) in enumerate(zip(hits, decisions), 1)]
        return {"results": results, "k": k, "threshold": rule.threshold, "policy": rule.policy,
                "catalogue": {"items": len(snap.subjects), "images": int(len(snap.templates))},
                "modality": self.modality, "model": self.scorer.bundle_id,
                "calibration_id": self.scorer.calibration_id, "timings_ms": clock.laps}

    # -- re-embed -----------------------------------------------------------------------

    def reembed(self, *, dry_run=False):
        """Re-embed every other-bundle template whose image was kept; list subjects to re-enroll.

        Templates move to the current bundle in batches, each one transaction. A kept image
        that no longer decodes counts as not kept.
        """
        stale = self.store.stale_templates(self.scorer.bundle_id, modality=self.modality,
                                           default_modality=self.default_modality)
        with_image = [tid for tid, _, _, has in stale if has]
        must_reenroll = {subject for _, subject, _, has in stale if not has}
        subject_of = {tid: subject for tid, subject, _, _ in stale}
        reembedded = 0
        if not dry_run:
            for start in range(0, len(with_image), REEMBED_BATCH):
                batch = with_image[start:start + REEMBED_BATCH]
                images, ids = [], []
                for tid, data in self.store.template_images(batch).items():
                    try:
                        images.append(decode_image(data))
                        ids.append(tid)
                    except VerifierError:
                        must_reenroll.add(subject_of[tid])
                if ids:
                    embeddings = self.scorer.embed(images)
                    reembedded += self.store.replace_embeddings(self.scorer.bundle_id, list(zip(ids, embeddings)))
        return {"modality": self.modality, "model": self.scorer.bundle_id, "stale_templates": len(stale),
                "reembeddable": len(with_image), "reembedded": reembedded, "dry_run": dry_run,
                "must_reenroll": sorted(must_reenroll)}
