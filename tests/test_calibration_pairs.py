"""The comparison protocol: pair counts, sampling, forgeries, templates and restriction."""

import numpy as np
import pytest

from calibration.pairs import enrollment_split, pair_comparisons, template_comparisons


def _embeddings(labels, seed=0):
    """Identity centres plus noise: genuine comparisons are closer than impostor ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, 8)) * 3
    return centres[labels] + rng.normal(size=(len(labels), 8)) * 0.3


def test_all_pairs_of_ten_identities_with_ten_images():
    labels = np.repeat(np.arange(10), 10)
    pairs = pair_comparisons(_embeddings(labels), labels, np.zeros(100, bool), "euclidean")
    assert len(pairs.genuine) == 450 and len(pairs.impostor) == 4500
    assert (pairs.id_a[pairs.label == 1] == pairs.id_b[pairs.label == 1]).all()
    assert (pairs.id_a[pairs.label == 0] != pairs.id_b[pairs.label == 0]).all()
    assert pairs.genuine.max() < pairs.impostor.min()


def test_impostor_sample_is_seeded_and_stated():
    labels = np.repeat(np.arange(10), 10)
    emb, forged = _embeddings(labels), np.zeros(100, bool)
    first = pair_comparisons(emb, labels, forged, "cosine", max_impostors=500, seed=3)
    again = pair_comparisons(emb, labels, forged, "cosine", max_impostors=500, seed=3)
    assert len(first.impostor) == 500 and first.sampled_from == 4500
    np.testing.assert_array_equal(first.distance, again.distance)
    assert len(first.genuine) == 450  # genuine pairs are never sampled


def test_skilled_forgeries_are_impostors_for_the_imitated_writer():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0])  # the last two are forgeries of writer 0
    forged = np.array([0, 0, 0, 0, 0, 0, 1, 1], bool)
    pairs = pair_comparisons(_embeddings(labels), labels, forged, "euclidean")
    assert pairs.forgery.sum() == 6  # 2 forgeries x 3 genuine images of writer 0
    assert (pairs.label[pairs.forgery] == 0).all()
    assert len(pairs.genuine) == 6 and (pairs.label == 0).sum() == 9 + 6


def test_template_protocol_counts_and_determinism():
    labels = np.repeat(np.arange(10), 10)
    emb, forged = _embeddings(labels), np.zeros(100, bool)
    enrolled, probes = enrollment_split(labels, forged, k=3, seed=1)
    assert all(len(v) == 3 for v in enrolled.values()) and len(probes) == 70
    assert not set(probes) & {i for v in enrolled.values() for i in v}
    fused = template_comparisons(emb, labels, forged, "euclidean", k=3, rule="mean", seed=1)
    assert len(fused.genuine) == 70 and len(fused.impostor) == 630
    again = template_comparisons(emb, labels, forged, "euclidean", k=3, rule="mean", seed=1)
    np.testing.assert_array_equal(fused.distance, again.distance)
    with pytest.raises(ValueError, match="cannot enroll"):
        template_comparisons(emb, labels, forged, "euclidean", k=10, rule="mean")


def test_identities_too_small_to_enroll_probe_as_impostors():
    labels = np.array([0] * 5 + [1] * 4 + [2, 3, 3])  # 2 and 3 have too few images to enroll 3 and probe
    emb, forged = _embeddings(labels), np.zeros(len(labels), bool)
    fused = template_comparisons(emb, labels, forged, "euclidean", k=3, rule="mean", seed=0)
    assert sorted(set(fused.id_b.tolist())) == [0, 1]  # only 0 and 1 are subjects
    assert len(fused.genuine) == 2 + 1  # each subject's images beyond the 3 enrolled
    # every other probe against both subjects: 3 images of 2 and 3, plus the other subject's probes
    assert len(fused.impostor) == 2 * 3 + 1 + 2
    assert (fused.label[np.isin(fused.id_a, [2, 3])] == 0).all()


def test_restrict_keeps_comparisons_within_identities():
    labels = np.repeat(np.arange(6), 4)
    pairs = pair_comparisons(_embeddings(labels), labels, np.zeros(24, bool), "euclidean")
    dev = pairs.restrict([0, 1, 2])
    assert set(dev.id_a) | set(dev.id_b) <= {0, 1, 2}
    assert len(dev.genuine) == 18 and len(dev.impostor) == 3 * 16


def test_with_impostors_keeps_the_genuine_and_one_kind_of_impostor():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0])  # the last two are forgeries of writer 0
    forged = np.array([0, 0, 0, 0, 0, 0, 1, 1], bool)
    pairs = pair_comparisons(_embeddings(labels), labels, forged, "euclidean")
    skilled, random = pairs.with_impostors("skilled"), pairs.with_impostors("random")
    assert len(skilled.genuine) == len(random.genuine) == 6
    assert len(skilled.impostor) == 6 and skilled.forgery[skilled.label == 0].all()
    assert len(random.impostor) == 9 and not random.forgery.any()
    assert skilled.sampled_from == 6 and random.sampled_from == 9
    assert pairs.with_impostors("all") is pairs
    with pytest.raises(ValueError, match="known"):
        pairs.with_impostors("traced")


def test_distances_are_computed_a_chunk_at_a_time_with_the_same_result():
    from calibration.pairs import chunked_pair_distances
    from verifier.core.distances import pair_distances

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5, 4))  # like raw pixels: rows are flattened by the metric
    first, second = rng.integers(0, 30, 101), rng.integers(0, 30, 101)
    whole = pair_distances(x[first].reshape(101, -1), x[second].reshape(101, -1), "cosine")
    np.testing.assert_allclose(chunked_pair_distances(x.reshape(30, -1), first, second, "cosine", budget=60), whole)
    assert chunked_pair_distances(x.reshape(30, -1), first[:0], second[:0], "cosine").shape == (0,)
