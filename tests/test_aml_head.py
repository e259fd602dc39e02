"""The AML decision head (common/tasks/aml_head.py): logistic regression on the model's decision states, trained by
federated full-batch gradient descent."""

import numpy as np
import pytest

from fedfingpt.common.tasks.aml_head import HeadError, decision_states, fit_head, fit_head_tuned, log_loss


def _toy(n: int, seed: int, shift: float = 0.0):
    """Two classes apart along the first feature; the other features noise on very different scales (as hidden
    states are), so the head needs its scaling."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    x = rng.normal(size=(n, 6)) * np.array([1, 50, 0.01, 3, 200, 1]) + shift
    x[:, 0] += np.where(y, 2.5, -2.5)
    return x.astype(np.float32), y


def test_the_head_learns_a_separable_direction_and_scores_probabilities():
    x, y = _toy(400, 0)
    head = fit_head([(x, y)], rounds=200)
    xt, yt = _toy(200, 1)
    p = head.scores(xt)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.mean((p >= 0.5) == yt) > 0.95
    assert log_loss(head, xt, yt) < log_loss(fit_head([(x, y)], rounds=1), xt, yt)  # training lowered the loss


def test_federated_banks_give_the_pooled_head():
    """Summed gradients each round = gradient descent on the pooled cases, whatever the banks' label skew."""
    x, y = _toy(300, 2)
    order = np.argsort(y, kind="stable")  # banks 0 and 1 hold only clean cases, bank 2 mostly laundering
    banks = [(x[idx], y[idx]) for idx in np.array_split(order, 3)]
    pooled = fit_head([(np.concatenate([b[0] for b in banks]), np.concatenate([b[1] for b in banks]))], rounds=50)
    fed = fit_head(banks, rounds=50)
    np.testing.assert_allclose(fed.w, pooled.w, rtol=1e-6, atol=1e-9)
    assert fed.b == pytest.approx(pooled.b)
    lone = fit_head([(x[:150], y[:150])], rounds=50)
    assert not np.allclose(lone.w, pooled.w)  # half the cases alone give another head


def test_the_penalty_is_chosen_on_validation_loss_and_bad_input_is_refused():
    x, y = _toy(200, 3)
    xv, yv = _toy(100, 4)
    head = fit_head_tuned([(x, y)], [(xv, yv)], grid=(1e-3, 10.0), rounds=100)
    assert head.l2 == 1e-3  # a penalty of 10 shrinks the head towards the prior: a worse validation loss
    with pytest.raises(HeadError, match="one label"):
        fit_head([(x[~y], y[~y])])
    with pytest.raises(HeadError, match="no training cases"):
        fit_head([])
    with pytest.raises(HeadError, match="val_share"):
        fit_head_tuned([(x, y)], [(xv[:0], yv[:0])])


def test_decision_states_match_one_case_alone(tiny_config):
    """Batched, left-padded states equal each case's own forward: padding never leaks into a case's state."""
    from fedfingpt.common.models import load_base_model
    from fedfingpt.common.tasks.aml_data import build_cases
    from fedfingpt.common.tasks.aml_generator import GeneratorConfig, generate

    cases = build_cases(generate(GeneratorConfig(num_banks=2, accounts_per_bank=40, seed=1)), seed=1)[:5]
    loaded = load_base_model(tiny_config.model)
    kw = {"max_length": 500, "max_lines": 3, "bf16": False}  # the tiny model takes 512 positions
    batched = decision_states(loaded.model, loaded.tokenizer, cases, batch_size=4, **kw)
    hidden = loaded.model.config.hidden_size
    assert batched.shape == (5, 2 * hidden) and np.isfinite(batched).all()
    alone = np.stack([decision_states(loaded.model, loaded.tokenizer, [c], batch_size=1, **kw)[0] for c in cases])
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batched[0], batched[1])  # different cases, different states
