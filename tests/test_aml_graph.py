"""A case's money path as a picture, GraphML and Cypher (`fedfingpt aml show`)."""

from datetime import datetime

import networkx as nx
import pytest

from fedfingpt.common.tasks import aml_graph
from fedfingpt.common.tasks.aml import Account, AmlCase, Transaction


def _case() -> AmlCase:
    accts = {"DE001": Account("DE001", "bank_0", 'Jane "JR" Roe\\', "DE"),
             "DE002": Account("DE002", "bank_0", "Max Muster", "DE"),
             "GB003": Account("GB003", "bank_1", "Ann Lee", "GB"),
             "LI004": Account("LI004", "offshore_li", "Shell Ltd", "LI")}
    t = [Transaction("t1", "DE002", "DE001", 9500.0, "EUR", datetime(2025, 3, 1), "Wire"),
         Transaction("t2", "DE002", "DE001", 9400.0, "EUR", datetime(2025, 3, 2), "Wire"),
         Transaction("t3", "DE001", "GB003", 12000.0, "EUR", datetime(2025, 3, 4), "Wire"),
         Transaction("t4", "GB003", "LI004", 11800.0, "EUR", datetime(2025, 3, 6), "Wire")]
    return AmlCase("clean-DE001", "bank_0", "DE001", t, accts, True, "structuring")


def test_the_graph_holds_every_account_and_transfer_with_the_hops_marked():
    g = aml_graph.case_graph(_case())
    assert sorted(g.nodes) == ["A", "B", "C", "D"]  # the narrative's letters: A the focus, then in time order
    assert g.number_of_edges() == 4 and g.number_of_edges("B", "A") == 2
    assert [d["day"] for _, _, d in sorted(g.edges(data=True), key=lambda e: e[2]["seq"])] == [1, 2, 4, 6]
    assert g.nodes["A"]["focus"] and g.nodes["C"]["other_bank"] and g.nodes["C"]["cross_border"]
    assert g.nodes["D"]["offshore"] and not g.nodes["B"]["other_bank"]
    hops = {(u, v): d["offshore_hop"] for u, v, d in g.edges(data=True)}
    assert hops[("C", "D")] and not hops[("A", "C")]


def test_exports_read_back_and_leave_names_and_account_numbers_out_unless_asked(tmp_path):
    case = _case()
    paths = aml_graph.export(case, tmp_path / "plain")
    assert sorted(p.suffix for p in paths) == [".cypher", ".graphml", ".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = nx.read_graphml(next(p for p in paths if p.suffix == ".graphml"))
    assert back.number_of_edges() == 4 and sorted(back.nodes) == ["A", "B", "C", "D"]
    assert sorted(d["amount"] for _, _, d in back.edges(data=True)) == [9400.0, 9500.0, 11800.0, 12000.0]
    for p in paths:
        text = p.read_bytes().decode("latin-1")
        assert not any(secret in text or secret in p.name for secret in ("DE001", "GB003", "Roe", "Muster", "Shell"))
    named = aml_graph.export(case, tmp_path / "named", ("graphml", "cypher"), names=True)
    assert {d["name"] for _, d in nx.read_graphml(named[0]).nodes(data=True)} >= {'Jane "JR" Roe\\', "Shell Ltd"}
    cy = named[1].read_text()
    # quotes and backslashes in a value stay inside their string literal
    assert 'name: "Jane \\"JR\\" Roe\\\\"' in cy
    assert cy.count("MERGE (") == 8 and cy.count(":TRANSFER {") == 4 and "clean-DE001" in cy


def test_a_bad_format_or_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        aml_graph.export(_case(), tmp_path, ("gif",))
    with pytest.raises(ValueError, match=".png or .svg"):
        aml_graph.render(_case(), tmp_path / "x.jpg")


def test_aml_show_writes_the_listed_case(data_dir, tmp_path, capsys):
    from fedfingpt.cli import main

    assert main(["-q", "aml", "list", "--set", f"data.data_dir={data_dir}"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("| case | bank | label |") and "| 3 |" in listed
    assert main(["-q", "aml", "show", "3", "--set", f"data.data_dir={data_dir}", "--out", str(tmp_path),
                 "--format", "png,cypher"]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit(".", 1)[1] for p in written] == ["png", "cypher"] and all((tmp_path / p).exists() for p in written)
    assert main(["-q", "aml", "show", "100000", "--set", f"data.data_dir={data_dir}"]) == 2
    assert "no case '100000'" in capsys.readouterr().err


def test_case_features_by_hand():
    from fedfingpt.common.tasks.aml_features import FEATURES, case_features, features_text

    f = case_features(_case())
    assert list(f) == list(FEATURES)
    assert {k: f[k] for k in ("transfers", "in_degree", "out_degree", "counterparties", "span_days")} == \
        {"transfers": 4, "in_degree": 1, "out_degree": 1, "counterparties": 3, "span_days": 5.0}
    assert (f["amount_total"], f["amount_median"], f["amount_max"], f["round_amounts"]) == (42700, 10650, 12000, 4)
    assert (f["near_threshold"], f["large_in"], f["large_out"]) == (2, 2, 1)
    assert (f["cross_border"], f["other_bank"], f["offshore"], f["cycle"]) == (3, 3, 1, 0)
    assert f["in_out_ratio"] == pytest.approx(18900 / 12000) and f["rules_fired"] == 1
    text = features_text(_case())
    assert text.startswith("Features: 4 transfers over 5.0 days; in-degree 1; out-degree 1; 3 counterparties;")
    assert text.endswith("3 cross-border; 1 offshore; cycle: no; rules fired: offshore.")
