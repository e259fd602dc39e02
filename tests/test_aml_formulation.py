"""The AML formulation: the features line and reasons made of the case's facts, the decision token's loss weight,
the calibrated risk score and its threshold, and the validation cases they are fitted on."""

import numpy as np
import pytest
import torch

from fedfingpt.common.tasks.aml_data import build_cases
from fedfingpt.common.tasks.aml_generator import GeneratorConfig, generate


def _cases(difficulty=1.0, seed=3):
    return build_cases(generate(GeneratorConfig(accounts_per_bank=150, seed=seed, difficulty=difficulty)))


def test_every_gold_reason_is_a_fact_of_its_case_and_a_changed_clause_is_caught():
    from fedfingpt.common.tasks.aml import aml_prompt, format_answer, gold_answer, parse_answer
    from fedfingpt.common.tasks.aml_features import facts, reason_problems

    cases = _cases()
    assert len({c.typology for c in cases}) >= 6
    for c in cases:
        ans = gold_answer(c)
        assert parse_answer(format_answer(ans)) == ans
        assert reason_problems(c, ans.reason) == [], (c.typology, ans.reason)
        prompt = aml_prompt(c)
        assert all(clause in prompt for clause in ans.reason.split("; ")), "the reason's evidence is in the prompt"
        assert prompt.index("Features: ") < prompt.index("Parties: "), "a cut narrative never loses the features"
    c = next(c for c in cases if c.typology == "fan_in")
    first = facts(c)[0]  # "N transfers over D days"
    n = int(first.split()[0])
    wrong = first.replace(f"{n} transfers", f"{n + 1} transfers", 1)
    assert reason_problems(c, f"in-degree {facts(c)[1].split()[-1]}; {wrong}") == \
        [f"{wrong!r} is not a fact of the case"]
    assert reason_problems(c, "") == ["the reason cites no evidence"]
    assert reason_problems(c, "many accounts sent funds to one account") != []


def _tiny(tiny_config):
    from fedfingpt.common.models import attach_lora, load_base_model

    loaded = load_base_model(tiny_config.model)
    return attach_lora(loaded.model, tiny_config.lora, seed=0), loaded.tokenizer


def test_a_weighted_answer_token_counts_that_much_in_the_loss(tiny_config):
    """The plain path (head on the answer positions only) and the reference (full logits) agree on the weighted
    loss, per token and per example; weight 1 everywhere is the unweighted loss."""
    from fedfingpt.common.prompt import IGNORE_INDEX, encode_example
    from fedfingpt.common.train import answer_loss, collate

    model, tok = _tiny(tiny_config)
    prompts = ["Instruction: screen.\nInput: 3 transfers\nAnswer:", "Instruction: screen.\nInput: 12 transfers\nAnswer:"]
    answers = ['{"suspicious": true, "reason": "x"}', '{"suspicious": false}']
    plain = collate([encode_example(tok, p, a, 96) for p, a in zip(prompts, answers)], tok.pad_token_id)
    ones = collate([encode_example(tok, p, a, 96, emphasis=(2, 1.0)) for p, a in zip(prompts, answers)],
                   tok.pad_token_id)
    heavy = collate([encode_example(tok, p, a, 96, emphasis=(2, 25.0)) for p, a in zip(prompts, answers)],
                    tok.pad_token_id)
    assert (heavy["weights"] == 25.0).sum() == 2 and "weights" not in plain
    model.eval()
    with torch.no_grad():
        base = answer_loss(model, plain)
        assert answer_loss(model, ones) == pytest.approx(base.item(), rel=1e-5)
        logits = model(input_ids=heavy["input_ids"], attention_mask=heavy["attention_mask"]).logits[:, :-1].float()
        target, w = heavy["labels"][:, 1:], heavy["weights"][:, 1:]
        tok_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                                     reduction="none")
        w = w * (target != IGNORE_INDEX)
        by_token = (tok_loss * w).sum() / w.sum()
        by_example = ((tok_loss * w).sum(1) / w.sum(1)).mean()
        for full in (False, True):
            assert answer_loss(model, heavy, full_logits=full) == pytest.approx(by_token.item(), rel=1e-4)
            assert answer_loss(model, heavy, per_example=True, full_logits=full) == \
                pytest.approx(by_example.item(), rel=1e-4)
        assert abs(by_token.item() - base.item()) > 1e-3, "the weight changed the loss"


def test_a_bad_emphasis_is_refused_by_name(tiny_config):
    from fedfingpt.common.prompt import encode_example

    _, tok = _tiny(tiny_config)
    with pytest.raises(ValueError, match="emphasis"):
        encode_example(tok, "Instruction: x\nInput: y\nAnswer:", "true", 32, emphasis=(99, 2.0))
    with pytest.raises(ValueError, match="emphasis"):
        encode_example(tok, "Instruction: x\nInput: y\nAnswer:", "true", 32, emphasis=(0, 0.0))


def _overconfident(n, seed):
    """Labels with a true probability q, and scores that overstate it (logit x 3)."""
    rng = np.random.default_rng(seed)
    q = 1 / (1 + np.exp(-rng.normal(-1.0, 1.5, n)))
    y = rng.random(n) < q
    p = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return p, y


def test_calibration_undoes_overconfidence_and_banks_histograms_add_up():
    from fedfingpt.common.metrics import expected_calibration_error
    from fedfingpt.common.tasks.aml_calibration import Calibration, score_histogram

    p, y = _overconfident(6000, 0)
    whole = Calibration.fit([score_histogram(p, y)])
    assert whole.a == pytest.approx(1 / 3, abs=0.05) and abs(whole.b) < 0.15
    banks = Calibration.fit([score_histogram(p[:1000], y[:1000]), score_histogram(p[1000:], y[1000:])])
    assert banks == whole, "the federation's sum of histograms fits what one pooled histogram fits"
    p2, y2 = _overconfident(6000, 1)
    assert expected_calibration_error(whole.probability(p2), y2) < expected_calibration_error(p2, y2) / 2
    # the threshold is the F1-best cut (up to the bins' width)
    best = max(2 * ((p >= t) & y).sum() / ((p >= t).sum() + y.sum()) for t in np.unique(p))
    assert whole.validation_f1 == pytest.approx(best, abs=0.01)
    flagged = whole.flags(p)
    assert 2 * (flagged & y).sum() / (flagged.sum() + y.sum()) == pytest.approx(whole.validation_f1, abs=0.01)


def test_a_calibration_refuses_what_it_cannot_fit_and_round_trips(tmp_path):
    from fedfingpt.common.tasks.aml_calibration import FILE, Calibration, CalibrationError, score_histogram

    with pytest.raises(CalibrationError, match="0 clean"):
        Calibration.fit([score_histogram([0.9, 0.8], [True, True])])
    with pytest.raises(CalibrationError, match="no validation"):
        Calibration.fit([])
    odd = score_histogram([0.1, 0.9], [False, True])
    odd["bins"] = 10
    with pytest.raises(CalibrationError, match="different binning"):
        Calibration.fit([odd, score_histogram([0.1, 0.9], [False, True])])
    cal = Calibration.fit([score_histogram(*_overconfident(500, 2))])
    assert Calibration.load(tmp_path) is None
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal
    (tmp_path / FILE).write_text('{"a": 1}')
    with pytest.raises(CalibrationError, match=FILE):
        Calibration.load(tmp_path)


def test_validation_cases_come_out_of_training_only(tmp_path):
    from fedfingpt.common.config import DataConfig
    from fedfingpt.common.tasks.aml_scenario import aml_split

    gen = {"accounts_per_bank": 150, "seed": 5, "difficulty": 1.0}
    plain = aml_split(DataConfig(tasks=["aml"], aml={"generator": gen}), 3)
    held = aml_split(DataConfig(tasks=["aml"], aml={"generator": gen, "val_share": 0.2}), 3)
    assert plain.val == [[], [], []] and all(held.val)
    assert [c.id for c in held.test] == [c.id for c in plain.test]
    for b in range(3):
        train, val = {c.id for c in held.train[b]}, {c.id for c in held.val[b]}
        assert not train & val and train | val == {c.id for c in plain.train[b]}
        assert {c.suspicious for c in held.val[b]} == {True, False}
        assert len(val) == pytest.approx(0.2 * len(plain.train[b]), abs=12)  # rounded per (bank, typology) group
