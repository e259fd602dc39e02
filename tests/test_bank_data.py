"""A bank's own data folder (the data contract): every bad row named, a data card, PII scrubbed before tokenisation,
a SuperNode that does not say who it is refused, and the simulation's banks written as folders that give the same
rows and split. Real Presidio with the spaCy model; a tiny model's tokenizer."""

import csv
import json
from types import SimpleNamespace

import pytest

from fedfingpt.common.bank_folder import (BankDataError, data_card, parse_label_map, read_bank_folder,
                                          require_usable)

GOOD = [("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn", "up"),
        ("The company said sales would stay flat next quarter", "flat"),
        ("Shares slumped after the profit warning", "down")]
LABELS = "up=positive,flat=neutral,down=negative"


def write_rows(folder, fmt, rows):
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(folder / "sentiment.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
    elif fmt == "jsonl":
        (folder / "sentiment.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                                                        for t, lab in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}),
                       folder / "sentiment.parquet")


@pytest.mark.parametrize("fmt, first_line", [("csv", 2), ("jsonl", 1), ("parquet", 1)])
def test_every_bad_row_is_named_and_a_bank_refuses_the_folder_until_skips_are_accepted(tmp_path, fmt, first_line):
    rows = GOOD + [("", "up"), ("Guidance unchanged", "sideways"), ("x" * 5000, "down")]
    write_rows(tmp_path / "bank", fmt, rows)
    bf = read_bank_folder(tmp_path / "bank", parse_label_map(LABELS))
    assert [ex.label for ex in bf.sentiment] == ["positive", "neutral", "negative"]
    lines = [p.line - first_line for p in bf.problems]  # back to 0-based row numbers
    assert lines == [3, 4, 5]
    assert ["empty or missing text" in bf.problems[0].reason, "unknown label 'sideways'" in bf.problems[1].reason,
            "5000 characters" in bf.problems[2].reason] == [True, True, True]
    with pytest.raises(BankDataError, match=r"3 bad row\(s\).*accept-skips") as err:
        require_usable(bf)
    assert f"sentiment.{fmt}:{first_line + 4}: unknown label" in str(err.value)
    require_usable(bf, accept_skips=True)  # the bank accepts that they are skipped: counted, not fatal


def test_a_label_outside_the_contract_needs_a_map_and_a_bad_map_is_named(tmp_path):
    write_rows(tmp_path / "bank", "csv", GOOD)
    assert len(read_bank_folder(tmp_path / "bank").problems) == 3  # up/flat/down without label-map
    with pytest.raises(BankDataError, match="label-map: up=bullish: the label must be one of"):
        parse_label_map("up=bullish")
    with pytest.raises(BankDataError, match="none of sentiment.csv"):
        read_bank_folder(tmp_path)  # a folder without any contract file


PLANTED = {"PERSON": ["Hannah Whitfield", "Oluwaseun Adeyemi"], "IBAN_CODE": ["GB82WEST12345698765432"],
           "CREDIT_CARD": ["4111 1111 1111 1111"], "EMAIL_ADDRESS": ["h.whitfield@example.org"],
           "US_SSN": ["536-22-8712"]}


def bank_with_planted_pii(folder):
    rows = [(f"Customer {PLANTED['PERSON'][0]} says the bank's profit outlook is strong", "positive"),
            (f"Refund to IBAN {PLANTED['IBAN_CODE'][0]} was delayed, complained Oluwaseun Adeyemi", "negative"),
            (f"Card {PLANTED['CREDIT_CARD'][0]} statement shows no change in fees", "neutral"),
            (f"Write to {PLANTED['EMAIL_ADDRESS'][0]} about the dividend, which was cut", "negative"),
            (f"SSN {PLANTED['US_SSN'][0]} on file; the loan book grew 4 %", "positive")] + \
           [(t, {"up": "positive", "flat": "neutral", "down": "negative"}[lab]) for t, lab in GOOD] * 2
    write_rows(folder, "csv", rows)
    # transactions: a fan-in alert on account ACC-77 and quiet accounts, with holder names
    lines = ["id,timestamp,from_account,to_account,amount,currency,payment_format,from_name,to_name"]
    for i in range(4):
        lines.append(f"f{i},2024-03-0{i + 1}T09:00:00,S{i},ACC-77,9{i}00,USD,cash,Sender Number{i},Hannah Whitfield")
    for a in range(6):
        for k in range(3):
            lines.append(f"q{a}{k},2024-03-1{k}T10:00:00,Q{a},Z{a},{100 + 10 * k},USD,wire,Oluwaseun Adeyemi,Shop {a}")
    (folder / "transactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "alerts.csv").write_text("alert_id,transaction_id,typology\n" + "".join(
        f"a1,f{i},fan_in\n" for i in range(4)))


def test_planted_names_and_account_numbers_never_reach_the_encoded_training_examples(tiny_config, tmp_path):
    """The scrub runs before tokenisation over the bank's texts and its AML narratives (holder names and account
    ids replaced): decoding every training example finds none of the planted values; with the scrub off they are
    there, so the check sees them when they leak."""
    from fedfingpt.common.bank_rows import folder_training_set
    from fedfingpt.common.models import load_base_model

    bank_with_planted_pii(tmp_path / "bank")
    cfg = tiny_config.model_copy(update={"data": tiny_config.data.model_copy(update={
        "tasks": ["sentiment", "aml"], "max_length": 800})})  # the tiny tokenizer spends ~680 tokens on a case
    tok = load_base_model(cfg.model).tokenizer
    values = [v for vs in PLANTED.values() for v in vs] + ["ACC-77"]

    def leaked(scrub_on: bool, policy=None):
        data = cfg.data.model_copy(update={"scrub": cfg.data.scrub.model_copy(update={"enabled": scrub_on,
                                                                                      **(policy or {})})})
        train, test, aml_test, _, report = folder_training_set(cfg.model_copy(update={"data": data}), tok, 0,
                                                               str(tmp_path / "bank"))
        decoded = [tok.decode(ex.input_ids) for ex in train] + [ex.text for ex in test]
        assert any("suspicious" in d for d in decoded)  # AML cases are in the set too
        # the case's evidence stays: amounts with their currency (the name lists would read "USD 100" as a name),
        # the bank holding the account, and our own instruction ("JSON" is no location)
        assert any("USD 100 wire" in d for d in decoded) and any("(bank)" in d for d in decoded)
        assert all("Answer in JSON" in d for d in decoded if "suspicious" in d)
        return {v for v in values if any(v in d for d in decoded)}, report, len(train) + len(test)

    found_raw, _, _ = leaked(False)
    assert found_raw == set(values)
    found, report, n = leaked(True)
    assert found == set()
    assert report["found"]["PERSON"] >= 2 and report["found"]["IBAN_CODE"] >= 1 and report["dropped"] == 0
    # drop: a row holding the type leaves training (counted), the others stay
    _, dropped, n_dropped = leaked(True, {"entities": {"US_SSN": "drop"}})
    assert dropped["dropped"] == 1


def test_data_check_writes_a_card_and_fails_on_bad_rows_until_accepted(tmp_path, capsys):
    from fedfingpt.cli import main

    write_rows(tmp_path / "bank", "jsonl", GOOD + GOOD[:1] + [("Guidance unchanged", "sideways")])
    args = ["data", "check", str(tmp_path / "bank"), "--label-map", LABELS, "--out", str(tmp_path / "card"),
            "--no-pii"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "sentiment.jsonl:5: unknown label 'sideways'" in err
    card = json.loads((tmp_path / "card" / "data-card.json").read_text())
    assert card["sentiment"]["rows"] == 4 and card["sentiment"]["duplicates"] == 1 and card["bad_rows"] == 1
    assert card["sentiment"]["labels"] == {"positive": 2, "neutral": 1, "negative": 1}
    assert main(args + ["--accept-skips"]) == 0
    assert "usable (1 bad rows accepted as skipped)" in capsys.readouterr().out


def test_the_card_counts_pii_per_type_and_public_test_texts_without_writing_a_value(tiny_config, tmp_path):
    from fedfingpt.common.pii.scrub import scrubber
    from fedfingpt.common.tasks.sentiment_data import SentimentExample

    bank_with_planted_pii(tmp_path / "bank")
    bf = read_bank_folder(tmp_path / "bank")
    public = {"fpb": [SentimentExample(GOOD[1][0], "neutral", "fpb", "news")]}
    card = data_card(bf, public, scrubber(tiny_config.gate, tiny_config.data.scrub))
    assert card["sentiment"]["equal_to_public_test_text"] == {"fpb": 2}  # GOOD is in the folder twice
    assert card["pii_in_sentiment"]["found"]["PERSON"] >= 2 and card["pii_in_sentiment"]["found"]["US_SSN"] == 1
    assert card["transactions"]["alerts"] == 1 and card["transactions"]["laundering_transactions"] == 4
    text = json.dumps(card)
    assert not any(v in text for vs in PLANTED.values() for v in vs)


def test_a_supernode_that_does_not_say_which_bank_it_is_refuses_to_train(tiny_config):
    """Stock flower-supernode without --node-config: before, it trained as bank 0 on bank 0's rows."""
    from fedfingpt.client.bank import bank_state
    from fedfingpt.common.nodeconfig import NodeConfigError

    for node_config, missing in [({}, "bank-id and bank-data"), ({"bank-id": 1}, "bank-data")]:
        with pytest.raises(NodeConfigError, match=f"node config lacks {missing}"):
            bank_state(tiny_config, SimpleNamespace(node_config=node_config, run_config={}))


def test_a_simulated_bank_reads_the_folder_the_simulation_wrote(tiny_config, data_dir, tmp_path, monkeypatch):
    """Only the simulation partitions: it writes each bank's share in the contract, and a simulated bank trains and
    tests on what its folder holds, the same examples a bank given that folder with --bank-data gets (scrub off, as
    the simulation's public rows are not scrubbed), split as the partition is split."""
    from fedfingpt.common.bank_rows import SIMULATED_ENV, folder_training_set, local_split, simulated_training_set
    from fedfingpt.common.models import load_base_model
    from fedfingpt.simulations import bank_folders
    from fedfingpt.common.tasks.sentiment_data import sentiment_splits
    from fedfingpt.simulations.partition import partition_pool, training_pool

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    cfg = tiny_config.model_copy(deep=True)
    cfg.data.data_dir = str(data_dir)
    cfg.data.scrub.enabled = False
    cfg.federation.num_banks = 2
    cfg.federation.partition.kind = "dirichlet"
    cfg.federation.partition.max_rows = 120
    cfg.federation.partition.min_partition_size = 10
    tok = load_base_model(cfg.model).tokenizer
    with pytest.raises(BankDataError, match="simulated bank 0 of 2: no folder written"):
        simulated_training_set(cfg, tok, 0, 2)  # a bank never cuts the public sets itself
    pool = training_pool(sentiment_splits(str(data_dir))["train"], cfg.federation.partition)
    parts = partition_pool(pool, 2, cfg.federation.partition)
    folders = bank_folders.write_simulated_banks(cfg, tmp_path / "banks")
    assert json.loads((tmp_path / "banks" / "banks.json").read_text())["num_banks"] == 2
    # with no run folder named, the app's client writes the same folders once, under the cache
    cached = bank_folders.ensure_simulated_banks(cfg, 2)
    assert cached.parent == tmp_path / "cache" / "fedfingpt" / "simulated-banks"
    assert (cached / "bank-1" / "sentiment.jsonl").read_bytes() == (folders[1] / "sentiment.jsonl").read_bytes()
    for bank, folder in enumerate(folders):
        sim_train, sim_test, _, _ = simulated_training_set(cfg, tok, bank, 2)
        own_train, own_test, _, _, report = folder_training_set(cfg, tok, bank, str(folder))
        assert report is None
        assert [ex.input_ids for ex in own_train] == [ex.input_ids for ex in sim_train]
        want_train, want_test = local_split([pool[i] for i in parts[bank]], cfg.federation.partition, bank)
        assert [(ex.text, ex.label, ex.kind, ex.source) for ex in sim_test] == \
            [(ex.text, ex.label, ex.kind, ex.source) for ex in want_test]
        assert len(sim_train) == len(want_train)
    # a run's folder ($FEDFINGPT_SIMULATED_BANKS) is what its banks read: a row taken out of it is gone from the bank
    monkeypatch.setenv(SIMULATED_ENV, str(tmp_path / "banks"))
    lines = (folders[0] / "sentiment.jsonl").read_text().splitlines(keepends=True)
    (folders[0] / "sentiment.jsonl").write_text("".join(lines[1:]))
    train, test = bank_folders.simulated_bank_rows(cfg, 0, 2)
    assert len(train) + len(test) == len(parts[0]) - 1
    assert json.loads(lines[0])["text"] not in {ex.text for ex in train + test}
    with pytest.raises(BankDataError, match="bank id 2 is not one of the 2 simulated banks"):
        simulated_training_set(cfg, tok, 2, 2)


def test_rows_read_back_exactly_as_written(tmp_path):
    """The simulation's rows hold leading spaces, tabs and Unicode line separators: a folder gives them back as they
    were, or a loopback bank would train on other text than its simulated twin."""
    from fedfingpt.common.bank_folder import write_sentiment_rows
    from fedfingpt.common.tasks.sentiment_data import SentimentExample

    rows = [SentimentExample(" Profit rose\u2028sharply ", "positive", "fpb", "news"),
            SentimentExample("Sales\tflat\r\n", "neutral", "tfns", "tweet")]
    write_sentiment_rows(tmp_path, rows)
    back = read_bank_folder(tmp_path).sentiment
    assert [(ex.text, ex.label, ex.kind) for ex in back] == [(ex.text, ex.label, ex.kind) for ex in rows]


def test_the_apps_client_writes_a_simulated_banks_folder_and_leaves_an_own_folder_alone(tiny_config, data_dir,
                                                                                       tmp_path, monkeypatch):
    """Under `flwr run` or a SuperNode with num-partitions nobody ran the simulation first: the app's mod writes the
    scenario's folders once (under the cache) before the bank reads its own; a bank with bank-data is untouched."""
    from fedfingpt.common.bank_rows import SIMULATED_ENV, simulated_root
    from fedfingpt.common.runconfig import JOB_KEY, job_record_value
    from fedfingpt.simulations.bank_folders import simulated_banks_mod

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    cfg = tiny_config.model_copy(deep=True)
    cfg.data.data_dir = str(data_dir)
    cfg.federation.partition.max_rows = 90
    msg = SimpleNamespace(content=SimpleNamespace(config_records={"config": {JOB_KEY: job_record_value(cfg)}}))
    seen = []
    own = SimpleNamespace(node_config={"bank-id": 0, "bank-data": str(tmp_path / "own")}, run_config={})
    simulated_banks_mod(msg, own, lambda m, c: seen.append(c))
    assert seen == [own] and not (tmp_path / "cache").exists()
    sim = SimpleNamespace(node_config={"partition-id": 1, "num-partitions": 3}, run_config={})
    simulated_banks_mod(msg, sim, lambda m, c: seen.append(c))
    root = simulated_root(cfg, 3)
    assert seen[-1] is sim and root is not None and root.parent == tmp_path / "cache" / "fedfingpt" / "simulated-banks"
    assert sorted(p.name for p in root.iterdir()) == ["bank-0", "bank-1", "bank-2", "banks.json"]
