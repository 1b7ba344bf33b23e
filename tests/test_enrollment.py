"""Enrollment, subject verify, identify and re-embed (the logic under the routes), on both stores."""

import copy
import dataclasses

import numpy as np
import pytest

from tests.synthetic import png_bytes
from verifier.core.errors import VerifierError
from verifier.core.fusion import fused_distances
from verifier.enrollment.service import EnrollmentService, FailureToEnrol, NotCalibrated
from verifier.enrollment.store import Conflict, NotFound

BLANK = np.full((56, 46, 1), 200, np.uint8)


@pytest.fixture
def service(store, scorer):
    return EnrollmentService(store, scorer)


def enroll_all(service, faces, per=3):
    for name, images in faces.items():
        service.enroll(name, images[:per], create=True)


def test_enroll_stores_embeddings_tagged_with_the_bundle(service, faces, scorer):
    result = service.enroll("id00", faces["id00"][:3], create=True, metadata={"k": "v"})
    assert result["enrolled"] == 3 and len(result["template_ids"]) == 3 and result["failures"] == []
    assert result["model"] == scorer.bundle_id
    stored = service.store.subject_templates("id00")[1][scorer.bundle_id]
    expected = scorer.embed(faces["id00"][:3])
    assert sorted(map(tuple, stored)) == sorted(map(tuple, expected))


def test_enroll_needs_an_existing_subject_unless_asked_to_create(service, faces):
    with pytest.raises(NotFound):
        service.enroll("nobody", faces["id00"][:1])


def test_blank_images_are_failures_to_enrol(service, faces):
    result = service.enroll("id00", [faces["id00"][0], BLANK], create=True)
    assert result["enrolled"] == 1 and result["failure_to_enrol"] == 1
    assert result["failures"][0]["index"] == 1 and "blank" in result["failures"][0]["reason"]
    with pytest.raises(FailureToEnrol) as err:
        service.enroll("id01", [BLANK, BLANK], create=True)
    assert err.value.status == 422 and [f["index"] for f in err.value.failures] == [0, 1]
    assert service.store.count_templates() == 1
    with pytest.raises(NotFound):  # nothing at all was stored for id01
        service.store.get_subject("id01")


def test_verify_uses_the_calibrated_fusion_rule(service, faces, scorer):
    service.enroll("id00", faces["id00"][:3], create=True)
    result = service.verify("id00", faces["id00"][4])
    templates = scorer.embed(faces["id00"][:3])
    expected = fused_distances(scorer.embed([faces["id00"][4]]), templates, scorer.metric, "mean")[0]
    assert result["distance"] == pytest.approx(expected, abs=1e-6)
    assert result["fusion"] == {"rule": "mean", "templates": 3}
    assert result["threshold"] == 0.4 and result["policy"] == "eer"
    assert result["model"] == scorer.bundle_id and result["calibration_id"] == scorer.calibration_id
    assert set(result) >= {"distance", "decision", "confidence", "threshold", "policy"}
    assert service.verify("id00", faces["id00"][0], threshold=1e-3)["decision"] == "different"
    assert service.verify("id00", faces["id00"][0], threshold=1.9)["decision"] == "same"


def test_verify_unknown_or_deleted_subject_is_404(service, faces):
    with pytest.raises(NotFound):
        service.verify("ghost", faces["id00"][0])
    service.enroll("id00", faces["id00"][:2], create=True)
    service.store.delete_subject("id00")
    with pytest.raises(NotFound):
        service.verify("id00", faces["id00"][0])


def test_templates_of_another_bundle_are_never_compared(service, faces, scorer):
    service.store.add_templates("old", "OTHERBUNDLE", np.ones((2, 8)), create=True)
    with pytest.raises(Conflict, match="OTHERBUNDLE.*reembed") as err:
        service.verify("old", faces["id00"][0])
    assert err.value.status == 409 and err.value.code == "bundle_mismatch"
    service.store.create_subject("empty")
    with pytest.raises(Conflict, match="no templates"):
        service.verify("empty", faces["id00"][0])
    assert service.identify(faces["id00"][0])["candidates"] == []  # other-bundle templates are not in the gallery


def test_identify_ranks_subjects_and_rejects_unknowns(service, faces):
    enroll_all(service, faces)
    result = service.identify(faces["id02"][0], top_k=3)
    assert result["match"] == "id02" and result["decision"] == "match"
    assert [c["subject_id"] for c in result["candidates"]][0] == "id02" and len(result["candidates"]) == 3
    distances = [c["distance"] for c in result["candidates"]]
    assert distances == sorted(distances)
    assert result["gallery"] == {"subjects": 4, "templates": 12} and result["fusion"] == {"rule": "mean"}
    assert service.verify("id02", faces["id02"][0])["distance"] == pytest.approx(distances[0], abs=1e-9)
    unknown = service.identify(faces["id02"][4], threshold=1e-4)
    assert unknown["match"] is None and unknown["decision"] == "no_match"
    assert all(c["decision"] == "different" for c in unknown["candidates"])
    for bad in (0, 101, "3", True):
        with pytest.raises(VerifierError):
            service.identify(faces["id02"][0], top_k=bad)


def test_identify_on_an_empty_gallery(service, faces):
    result = service.identify(faces["id00"][0])
    assert result["match"] is None and result["candidates"] == [] and result["threshold"] == 0.4


def test_every_worker_sees_every_change(store, scorer, faces):
    worker_a, worker_b = EnrollmentService(store, scorer), EnrollmentService(store, scorer)
    worker_b.enroll("id00", faces["id00"][:2], create=True)
    assert worker_a.identify(faces["id00"][0])["match"] == "id00"
    worker_b.enroll("id01", faces["id01"][:2], create=True)
    assert worker_a.identify(faces["id01"][0])["match"] == "id01"
    gallery = worker_a.gallery()
    assert (gallery.reloads, gallery.appends) == (1, 1)  # the new rows were merged, not reloaded
    worker_b.store.delete_subject("id01")
    assert worker_a.identify(faces["id01"][0])["match"] != "id01"
    assert gallery.reloads == 2  # a removal reloads
    worker_a.identify(faces["id00"][0])
    assert (gallery.reloads, gallery.appends) == (2, 1)  # unchanged store: the cached matrix is reused


def test_reembed_moves_kept_images_and_lists_the_rest(service, faces, scorer):
    image = faces["id00"][0]
    service.store.add_templates("kept", "OLD", np.ones((1, 8)), images=[png_bytes(image)], create=True)
    service.store.add_templates("lost", "OLD", np.ones((1, 8)), create=True)
    dry = service.reembed(dry_run=True)
    assert dry["stale_templates"] == 2 and dry["reembedded"] == 0 and dry["must_reenroll"] == ["lost"]
    result = service.reembed()
    assert result["reembedded"] == 1 and result["must_reenroll"] == ["lost"]
    assert service.verify("kept", image)["distance"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(Conflict):
        service.verify("lost", image)


def test_subject_decisions_need_a_fusion_calibration(store, scorer, faces):
    bundle = dataclasses.replace(scorer.bundle, calibration={k: v for k, v in scorer.calibration.items()
                                                             if k != "fusion"})
    uncalibrated = copy.copy(scorer)
    uncalibrated.bundle = bundle
    service = EnrollmentService(store, uncalibrated)
    service.enroll("id00", faces["id00"][:2], create=True)  # enrolling needs no threshold
    for call in (lambda: service.verify("id00", faces["id00"][0]), lambda: service.identify(faces["id00"][0])):
        with pytest.raises(NotCalibrated) as err:
            call()
        assert err.value.status == 503 and "fusion" in err.value.message
