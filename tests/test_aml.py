"""The AML task: loaders on slices of the real files, bad rows, the synthetic generator's rates and shapes,
narratives and the strict answer parser, the rules baseline and the AML metrics."""

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedfingpt.common.metrics import aml_report
from fedfingpt.common.tasks.aml import (MAX_LINES, NONE, AnswerError, format_answer, gold_answer, narrative,
                                        parse_answer)
from fedfingpt.common.tasks.aml_data import (assign_banks, build_cases, load_amlsim_alerts, load_amlsim_export,
                                             load_amlsim_nodes, load_amlworld)
from fedfingpt.common.tasks.aml_rules import rules_answer, rules_score
from fedfingpt.common.tasks.sentiment_data import DataFormatError
from fedfingpt.common.tasks.aml_generator import GeneratorConfig, default_banks, generate, iban_valid


@pytest.fixture(scope="module")
def aml_dir(data_dir) -> Path:
    return data_dir / "aml"


def _slice(src: Path, dst: Path, lines: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(line for _, line in zip(range(lines), f)), encoding="utf-8")


def test_amlsim_export_loads_four_banks_with_sar_labels(aml_dir, tmp_path):
    ds = load_amlsim_export(aml_dir / "amlsim_4bank_export")
    assert ds.banks() == ["can_bank", "ind_bank", "uae_bank", "usa_bank"] and len(ds.accounts) == 100
    assert len(ds.transactions) == 10333 and sum(t.laundering for t in ds.transactions) == 51
    assert {t.typology for t in ds.transactions if t.laundering} == {"fan_in"} and not ds.skipped
    # a slice of the transactions keeps every account reference resolvable
    for name in ("accounts.csv", "alert_transactions.csv"):
        _slice(aml_dir / "amlsim_4bank_export" / name, tmp_path / "s" / name, 10**6)
    _slice(aml_dir / "amlsim_4bank_export" / "transactions.csv", tmp_path / "s" / "transactions.csv", 201)
    part = load_amlsim_export(tmp_path / "s")
    assert len(part.transactions) == 200 and part.transactions[0].id == "1" and part.transactions[0].amount == 234.08


def test_amlworld_patterns_and_normal_sample(aml_dir):
    ds = load_amlworld(aml_dir / "ibm_amlworld_hi_small_patterns")
    bad = [t for t in ds.transactions if t.laundering]
    assert len(bad) == 3209 and len({t.pattern for t in bad}) == 370
    assert Counter(t.typology for t in bad)["gather_scatter"] == 716
    assert len(ds.transactions) - len(bad) == 1000 and {t.currency for t in ds.transactions} <= {"USD", "EUR", "SAR",
                                                                                               "CHF", "INR", "GBP",
                                                                                               "CNY", "JPY", "CAD",
                                                                                               "AUD", "MXN", "BRL",
                                                                                               "ILS", "RUB", "BTC"}
    four = assign_banks(ds, 4)
    assert four.banks() == ["bank_0", "bank_1", "bank_2", "bank_3"] and len(four.transactions) == len(ds.transactions)
    cases = build_cases(four)
    assert sum(c.suspicious for c in cases) == 370 and {c.bank for c in cases} <= set(four.banks())


def test_amlsim_nodes_and_alerts(aml_dir, tmp_path):
    src = aml_dir / "amlsim_20k" / "20K_cycle200"
    for name in ("nodes.csv", "metadata.txt"):
        _slice(src / name, tmp_path / "n" / name, 10**6)
    _slice(src / "transactions.csv", tmp_path / "n" / "transactions.csv", 5001)
    ds = load_amlsim_nodes(tmp_path / "n", num_banks=3)
    assert len(ds.accounts) == 20000 and len(ds.transactions) == 5000 and ds.banks() == ["bank_0", "bank_1", "bank_2"]
    assert sum(a.laundering for a in ds.accounts.values()) == 945
    assert {t.typology for t in ds.transactions if t.laundering} <= {"cycle"}
    alerts = load_amlsim_alerts(aml_dir / "amlsim_10k_alerts")
    assert len(alerts.transactions) == 1719 and Counter(t.typology for t in alerts.transactions) == {"cycle": 936,
                                                                                                     "fan_in": 783}


@pytest.mark.parametrize("row,needle", [
    ("9,50,999,WIRE,10.00,2011-01-01T00:00:00Z,False,-1", "unknown account: 999"),
    ("9,50,62,WIRE,-4.00,2011-01-01T00:00:00Z,False,-1", "negative or non-numeric amount"),
    ("9,50,62,WIRE,ten,2011-01-01T00:00:00Z,False,-1", "negative or non-numeric amount"),
    ("9,50,62,WIRE,10.00,yesterday,False,-1", "unparseable date"),
    ("1,50,62,WIRE,10.00,2011-01-01T00:00:00Z,False,-1", "duplicated transaction id: 1"),
])
def test_bad_rows_stop_the_load_or_are_counted(aml_dir, tmp_path, row, needle):
    folder = tmp_path / "bad"
    for name in ("accounts.csv", "alert_transactions.csv"):
        _slice(aml_dir / "amlsim_4bank_export" / name, folder / name, 10**6)
    _slice(aml_dir / "amlsim_4bank_export" / "transactions.csv", folder / "transactions.csv", 6)
    with open(folder / "transactions.csv", "a", encoding="utf-8") as f:
        f.write(row + "\n")
    with pytest.raises(DataFormatError, match=rf"transactions.csv:7: {needle}.*on_bad='skip'"):
        load_amlsim_export(folder)
    ds = load_amlsim_export(folder, on_bad="skip")
    assert len(ds.transactions) == 5 and sum(ds.skipped.values()) == 1


def test_unknown_currency_is_named(aml_dir, tmp_path):
    folder = tmp_path / "w"
    _slice(aml_dir / "ibm_amlworld_hi_small_patterns" / "laundering_patterns.csv", folder / "laundering_patterns.csv", 4)
    with open(folder / "laundering_patterns.csv", "a", encoding="utf-8") as f:
        f.write("9,FAN-IN,x,2022/09/01 00:06,021174,800737690,012,80011F990,1.0,Doubloon,1.0,Doubloon,ACH,1\n")
    with pytest.raises(DataFormatError, match="currency not in the table: 'Doubloon'"):
        load_amlworld(folder)
    assert load_amlworld(folder, on_bad="skip").skipped == {"currency not in the table": 1}


def test_generator_keeps_its_rates_and_is_seeded():
    for rate in (0.02, 0.1):
        ds = generate(GeneratorConfig(laundering_rate=rate, accounts_per_bank=200, seed=3))
        share = sum(t.laundering for t in ds.transactions) / len(ds.transactions)
        assert rate * 0.85 <= share <= rate * 1.3, (rate, share)
    a, b = generate(GeneratorConfig(seed=5)), generate(GeneratorConfig(seed=5))
    assert [(t.src, t.dst, t.amount) for t in a.transactions] == [(t.src, t.dst, t.amount) for t in b.transactions]
    assert generate(GeneratorConfig(seed=6)).transactions[0] != a.transactions[0]
    assert all(iban_valid(acct) for acct in a.accounts) and len(a.banks()) == 4 + len(
        {x.bank for x in a.accounts.values() if x.bank.startswith("offshore")})
    names = [x.name for x in a.accounts.values()]
    assert len(set(names)) > 100 and all(n.strip() for n in names)


def test_generator_typology_shapes_and_bank_mixes():
    cfg = GeneratorConfig(laundering_rate=0.15, accounts_per_bank=200, seed=11)
    ds = generate(cfg)
    patterns = defaultdict(list)
    for t in ds.transactions:
        if t.laundering:
            patterns[t.pattern].append(t)
    seen = Counter()
    mix = {spec.name: {t for t, w in spec.typology_mix.items() if w > 0} for spec in default_banks(4)}
    for txs in patterns.values():
        typ = txs[0].typology
        seen[typ] += 1
        assert all(t.typology == typ for t in txs)
        if typ == "fan_in":
            assert len({t.dst for t in txs}) == 1 and len({t.src for t in txs}) >= 3
        elif typ == "fan_out":
            assert len({t.src for t in txs}) == 1 and len({t.dst for t in txs}) >= 3
        elif typ == "structuring":
            assert len({t.dst for t in txs}) == 1
            assert all(0.9 * cfg.reporting_threshold <= t.amount < cfg.reporting_threshold for t in txs)
        elif typ == "cycle":
            succ = {t.src: t.dst for t in txs}
            start = txs[0].src
            node, hops = succ[start], 1
            while node != start and hops <= len(txs):
                node, hops = succ[node], hops + 1
            assert node == start, "the chain returns to where it started"
        elif typ == "scatter_gather":
            assert len({t.dst for t in txs} - {t.src for t in txs}) == 1, "one sink"
        home = txs[0].pattern.split("/")[0]  # the bank whose customers run the pattern
        assert typ in mix[home], (typ, home)
    assert set(seen) == {"fan_in", "fan_out", "cycle", "scatter_gather", "gather_scatter", "bipartite", "stack",
                         "random", "structuring"}
    foreign = sum(ds.accounts[t.src].bank != ds.accounts[t.dst].bank for txs in patterns.values() for t in txs)
    assert foreign > 0, "cross-border hops"


def test_narrative_answer_round_trip_and_strict_parser():
    ds = generate(GeneratorConfig(seed=2))
    cases = build_cases(ds)
    for case in cases[:40]:
        ans = gold_answer(case)
        assert parse_answer(format_answer(ans)) == ans
        text = narrative(case)
        assert case.focus in text and case.accounts[case.focus].name in text
        assert ans.suspicious == case.suspicious and (ans.typology == NONE) != case.suspicious
    long = max(cases, key=lambda c: len(c.transactions))
    assert len(long.transactions) > MAX_LINES and "more transfers" in narrative(long)
    for bad, needle in [("suspicious: yes", "not JSON"), ("[1]", "JSON object"),
                        ('{"suspicious": true, "typology": "fan_in", "risk_score": 90}', "keys must be"),
                        ('{"suspicious": "yes", "typology": "fan_in", "risk_score": 90, "reason": "x"}', "true or"),
                        ('{"suspicious": true, "typology": "smurfing", "risk_score": 90, "reason": "x"}', "unknown"),
                        ('{"suspicious": true, "typology": "fan_in", "risk_score": 190, "reason": "x"}', "0..100"),
                        ('{"suspicious": true, "typology": "none", "risk_score": 90, "reason": "x"}', "contradicts"),
                        ('{"suspicious": true, "typology": "fan_in", "risk_score": 9.5, "reason": "x"}', "integer"),
                        ('{"suspicious": true, "typology": "fan_in", "risk_score": 90, "reason": ""}', "one non-empty")]:
        with pytest.raises(AnswerError, match=needle):
            parse_answer(bad)


def test_rules_baseline_reads_the_shapes():
    ds = generate(GeneratorConfig(laundering_rate=0.1, accounts_per_bank=200, seed=4))
    cases = build_cases(ds)
    by_typ = defaultdict(list)
    for c in cases:
        by_typ[c.typology].append(rules_answer(c))
    assert np.mean([a.typology == "structuring" for a in by_typ["structuring"]]) >= 0.8
    assert np.mean([a.suspicious for a in by_typ["fan_in"]]) >= 0.8
    assert np.mean([a.suspicious for a in by_typ[NONE]]) <= 0.2
    score, typ = rules_score(by_typ and cases[0])
    assert 0 <= score <= 1 and typ


def test_aml_report_by_hand():
    truth = ["fan_in", "fan_in", "cycle", "none", "none"]
    scores = [0.9, 0.2, 0.7, 0.6, 0.1]
    pred = ["fan_in", "none", "fan_in", None, "none"]
    r = aml_report(truth, scores, pred, threshold=0.5)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["recall_by_typology"] == {"cycle": {"n": 1, "recall": 1.0}, "fan_in": {"n": 2, "recall": 0.5}}
    assert r["typology_accuracy"] == pytest.approx(0.5) and r["unparseable"] == 1 and r["alert_rate"] == 0.6


def test_binary_intervals_bracket_the_estimate_and_are_seeded():
    from fedfingpt.common.metrics import binary_intervals, binary_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.35 * y + rng.random(300) * 0.65, 0, 1)  # informative, not perfect
    point = binary_report(y.tolist(), s.tolist(), 0.5)
    ci = binary_intervals(y, s, 0.5, seed=1)
    for k in ("precision", "recall", "f1", "pr_auc"):
        lo, hi = ci[k]
        assert lo <= point[k] <= hi and hi - lo > 0.01, k
    assert ci == binary_intervals(y, s, 0.5, seed=1)
    perfect = binary_intervals([0, 1] * 20, [0.1, 0.9] * 20, 0.5)  # a perfect ranking: every resample scores 1
    assert perfect["f1"] == (1.0, 1.0) and perfect["pr_auc"] == (1.0, 1.0)
