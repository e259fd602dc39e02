"""The commands end to end on a tiny model and slices of the real data: train -> adapter -> eval, and errors."""

import json

import yaml

from fedfingpt.cli import main


def _write(tiny_config, tmp_path, data_dir):
    cfg = tiny_config.model_dump(mode="json")
    cfg["data"].update({"data_dir": str(data_dir), "eval_sets": ["fpb", "tfns"], "eval_limit": 10})
    cfg["training"].update({"max_steps": 2, "eval_every": 1, "eval_limit": 6})
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_train_then_eval_reproduces_the_scores(tiny_config, tmp_path, data_dir, capsys):
    cfg = _write(tiny_config, tmp_path, data_dir)
    assert main(["-q", "train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["dataset"] for r in metrics["rows"]} == {"fpb", "tfns"} and all(r["n"] == 10 for r in metrics["rows"])
    assert metrics["train"]["steps"] == 2 and len(metrics["periodic_evals"]) == 2
    assert metrics["peak_rss_mb"] > 0 and "machine" in metrics and metrics["seed"] == 42
    assert (run / "metrics.md").read_text().count("|") > 10 and (run / "report.png").stat().st_size > 1000
    manifest = json.loads((run / "adapter" / "fedfingpt_manifest.json").read_text())
    assert manifest["train"]["steps"] == 2 and manifest["config"]["lora"]["r"] == 4
    out = capsys.readouterr().out
    assert "weighted_f1" in out and str(run / "adapter") in out

    assert main(["-q", "eval", str(cfg), "--adapter", str(run / "adapter"), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert again["adapter_sha256"] == manifest["weights_sha256"]
    for a, b in zip(sorted(metrics["rows"], key=lambda r: r["dataset"]), sorted(again["rows"], key=lambda r: r["dataset"])):
        assert a["accuracy"] == b["accuracy"] and abs(a["weighted_f1"] - b["weighted_f1"]) < 1e-12


def test_eval_generate_reports_unparsed_share(tiny_config, tmp_path, data_dir):
    cfg = _write(tiny_config, tmp_path, data_dir)
    assert main(["-q", "eval", str(cfg), "--method", "both", "--calibrate", "--sets", "fpb", "--limit", "5",
                 "--out", str(tmp_path / "ev")]) == 0
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert set(by) == {"likelihood", "likelihood-calibrated", "generate"}
    assert by["likelihood"]["accuracy"] != by["likelihood-calibrated"]["accuracy"] or \
        by["likelihood"]["ece"] != by["likelihood-calibrated"]["ece"]
    # A random tiny model emits no label words: every generated answer is unparseable, and is reported so.
    assert by["generate"]["unparsed_share"] == 1.0 and by["generate"]["accuracy"] == 0.0
    assert "fingpt_parser_accuracy" in by["generate"] and by["likelihood-calibrated"]["unparsed_share"] == 0


def test_errors_exit_2_with_the_reason(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: -1\n")
    assert main(["train", str(bad)]) == 2
    assert "training.lr" in capsys.readouterr().err
    monkeypatch.delenv("FEDFINGPT_DATA_DIR", raising=False)
    ok = tmp_path / "ok.yaml"
    ok.write_text("model:\n  base: tiny-random\n")
    assert main(["-q", "eval", str(ok), "--out", str(tmp_path / "x")]) == 2
    assert "FEDFINGPT_DATA_DIR" in capsys.readouterr().err


def test_enclave_measure_reads_the_service_sections_of_a_job_file(tiny_config, tmp_path, capsys):
    """`fedfingpt enclave measure` (and `serve`) read the serving side of a file: a job's training sections change
    no measured byte, a gate setting does, and a section of neither kind stops it with the section's name."""
    def measure(cfg: dict) -> dict:
        p = tmp_path / "svc.yaml"
        p.write_text(yaml.safe_dump(cfg))
        assert main(["-q", "enclave", "measure", str(p), "--set", "serving.enclave=software"]) == 0
        return json.loads(capsys.readouterr().out)

    job = tiny_config.model_dump(mode="json")
    first = measure(job)
    job["training"]["max_steps"] = 99
    job["data"]["max_length"] = 64
    assert measure(job) == first
    job["gate"] = {"min_score": 0.7}
    changed = measure(job)
    assert changed["config"] != first["config"] and changed["code"] == first["code"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": job["model"], "gatee": {}}))
    assert main(["-q", "enclave", "measure", str(bad)]) == 2
    assert "unknown section(s) gatee" in capsys.readouterr().err
