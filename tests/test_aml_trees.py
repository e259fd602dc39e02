"""The boosted-trees AML baseline on the case features (common/tasks/aml_trees.py)."""

import numpy as np
import pytest

from fedfingpt.common.tasks.aml_data import build_cases
from fedfingpt.common.tasks.aml_features import FEATURES
from fedfingpt.common.tasks.aml_generator import GeneratorConfig, generate
from fedfingpt.common.tasks.aml_trees import best_threshold, feature_matrix, labels, train_trees


def test_best_threshold_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    # at 0.4: 3 tp, 1 fp -> F1 6/7; at 0.8: 2 tp -> F1 0.8; at 0.6: 2 tp 1 fp -> 4/6
    assert best_threshold(y, p) == pytest.approx(0.4)
    assert best_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5


def test_trees_learn_the_generated_shapes_and_refuse_one_label():
    cases = build_cases(generate(GeneratorConfig(num_banks=3, accounts_per_bank=120, seed=3)), seed=3)
    x = feature_matrix(cases)
    assert x.shape == (len(cases), len(FEATURES)) and np.isfinite(x).all()
    train, test = cases[::2], cases[1::2]
    model = train_trees(train, seed=0)
    y, pred = labels(test), model.predict(test)
    tp = int(np.sum(pred & (y == 1)))
    assert 2 * tp / (pred.sum() + y.sum()) >= 0.7  # well above what an always-positive guess gets
    assert np.array_equal(model.scores(test), train_trees(train, seed=0).scores(test))  # seeded: same trees
    with pytest.raises(ValueError, match="both labels"):
        train_trees([c for c in cases if not c.suspicious], seed=0)


def test_difficulty_adds_lookalikes_the_rules_flag_and_laundering_they_miss():
    from collections import Counter

    from fedfingpt.common.tasks.aml_generator import LOOKALIKES
    from fedfingpt.common.tasks.aml_rules import rules_answer

    def world(d):
        return build_cases(generate(GeneratorConfig(num_banks=3, accounts_per_bank=300, seed=5, difficulty=d)), seed=5)

    easy, hard = world(0.0), world(1.0)
    assert not any("/" in c.id and not c.suspicious for c in easy)  # difficulty 0: no look-alikes
    looks = [c for c in hard if not c.suspicious and "/" in c.id]
    kinds = Counter(c.id.split("/")[1].rsplit("-", 1)[0] for c in looks)
    assert set(kinds) == set(LOOKALIKES) and min(kinds.values()) >= 3
    for kind in LOOKALIKES:  # each kind is shaped like what a rule looks for: the rules flag most of them
        of_kind = [c for c in looks if f"/{kind}-" in c.id]
        assert sum(rules_answer(c).suspicious for c in of_kind) >= 0.5 * len(of_kind), kind

    def recall(cases):
        pos = [c for c in cases if c.suspicious]
        return sum(rules_answer(c).suspicious for c in pos) / len(pos)

    assert recall(hard) < recall(easy) - 0.2  # disguised laundering slips past the rules
