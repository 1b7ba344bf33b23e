"""bench/oneshot.py: N-way one-shot episodes on hand-made embeddings, and the bench on a tiny folder."""

import json

import numpy as np
import pytest

from bench import oneshot
from bench.oneshot import one_shot_accuracy, ways_for, wilson_interval
from tests.synthetic import write_folder


def test_separated_classes_are_always_right():
    labels = np.repeat(np.arange(5), 3)
    embeddings = labels[:, None] * 10.0 + np.tile([0.0, 0.1, 0.2], 5)[:, None]
    for ways in (2, 3, 5):
        result = one_shot_accuracy(embeddings, labels, ways, 200, np.random.default_rng(0), "euclidean")
        assert (result.correct, result.episodes, result.ways) == (200, 200, ways)


def test_exactly_the_episodes_of_the_compact_class_are_right():
    # class 0 at 0 and 10: its query is 10 from its own support, 5 from class 1's -> always wrong;
    # class 1 at 5 and 5: its query is 0 from its support -> always right. Each is the query half the time.
    embeddings = np.array([[0.0], [10.0], [5.0], [5.0]])
    labels = np.array([0, 0, 1, 1])
    for seed in range(3):
        result = one_shot_accuracy(embeddings, labels, 2, 100, np.random.default_rng(seed), "euclidean")
        assert result.correct == 50 and result.accuracy == 0.5


def test_ties_are_broken_at_random_and_episodes_are_seeded():
    labels = np.repeat(np.arange(4), 3)
    same = np.ones((12, 2))  # every support at the same distance: chance, 1 / N
    result = one_shot_accuracy(same, labels, 4, 4000, np.random.default_rng(0), "cosine")
    assert 0.22 < result.accuracy < 0.28
    noisy = np.random.default_rng(1).normal(size=(12, 2))
    runs = [one_shot_accuracy(noisy, labels, 3, 300, np.random.default_rng(7), "euclidean") for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError):
        one_shot_accuracy(noisy, labels, 5, 10, np.random.default_rng(0), "euclidean")  # only 4 classes


def test_wilson_interval_and_ways():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high) and 0.23 < low < 0.24  # 0.2366
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert ways_for([2, 5, 10, "all"], 3) == [2, 3] and ways_for([2, 5, 10, "all"], 10) == [2, 5, 10]


def test_bench_on_a_tiny_folder_with_baselines(tmp_path, capsys):
    root = write_folder(tmp_path / "six", n_identities=6, per_identity=4)
    assert oneshot.main(["--data", str(root), "--models", "raw-pixels,pca,colour-hist", "--ways", "2,5,all",
                         "--trials", "40"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["folds"] == [1, 2, 3] and report["per_fold"] == 2  # 6 identities: 3 folds of 2
    assert set(report["models"]) == {"raw-pixels", "pca", "colour-hist"}
    two = report["models"]["raw-pixels"]["ways"]["2"]
    assert set(report["models"]["raw-pixels"]["ways"]) == {"2"}  # 5 and all (2) need more than 2 held out
    assert two["episodes"] == 120 and sorted(two["folds"]) == ["1", "2", "3"] and two["chance"] == 0.5
    assert two["correct"] == sum(f["correct"] for f in two["folds"].values())
    assert two["interval"][0] <= two["accuracy"] <= two["interval"][1]
    assert two["accuracy"] > 0.9  # the synthetic identities are distinct patterns
