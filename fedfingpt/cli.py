"""The `fedfingpt` command: simulate (the main job), train, eval, models prepare, deploy (real rounds)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .common.config import ConfigError, load_config, load_service_config, parse_override


def _config(args) -> "Config":  # noqa: F821
    overrides = dict(parse_override(s) for s in (args.set or []))
    return load_config(args.config, overrides)


def _add_config_args(p: argparse.ArgumentParser, optional: bool = True, what: str | None = None) -> None:
    p.add_argument("config", nargs="?" if optional else None,
                   help=what or "YAML file (configs/*.yaml); default: embedded")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. training.max_steps=10")
    p.add_argument("--out", help="output folder (default: runs/NAME-train-TIME, runs/NAME-eval-TIME, runs/NAME for simulate)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedfingpt", description=__doc__)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="base models")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="convert/cache the base model once (GGUF -> HF folder) and print it")
    prep.add_argument("--base", help="model.base to prepare (default: from the config)")
    _add_config_args(prep)

    tr = sub.add_parser("train", help="centralized LoRA training with evaluation")
    _add_config_args(tr)

    ev = sub.add_parser("eval", help="evaluate zero-shot or with an adapter on FPB, FiQA, TFNS, NWGI")
    _add_config_args(ev)
    ev.add_argument("--adapter", help="adapter folder written by `fedfingpt train`")
    ev.add_argument("--sets", help="comma-separated: fpb,fiqa,tfns,nwgi")
    ev.add_argument("--limit", type=int, help="score a seeded sample of N rows per set (default: data.eval_limit, "
                    "which is every row unless the config sets it; 0 = every row)")
    ev.add_argument("--method", choices=["likelihood", "generate", "both"])
    ev.add_argument("--calibrate", action="store_true", help="contextual calibration of label scores")

    sim = sub.add_parser("simulate", help="federated LoRA across simulated banks (Flower Simulation Engine)")
    _add_config_args(sim)

    priv = sub.add_parser("privacy", help="a bank's privacy ledger")
    psub = priv.add_subparsers(dest="privacy_command", required=True)
    led = psub.add_parser("ledger", help="show what a bank has spent (checks the ledger's checksum)")
    led.add_argument("folder", help="the bank's state folder, e.g. runs/NAME/banks/bank-0")

    srv = sub.add_parser("serve", help="the compliance-gated gRPC inference service (configs/serving.yaml)")
    _add_config_args(srv, what="a serving config (configs/serving.yaml) or a job's file, whose model, lora, gate "
                     "and serving sections it reads; default: the defaults")
    srv.add_argument("--port", type=int, help="override serving.port (0 = a free port)")
    srv.add_argument("--insecure", action="store_true", help="plaintext transport (tests and demos only)")

    qry = sub.add_parser("query", help="call the inference service")
    qry.add_argument("what", choices=["sentiment", "info"], help="ClassifySentiment or GetModelInfo")
    qry.add_argument("texts", nargs="*", help="texts to classify")
    qry.add_argument("--target", default="127.0.0.1:50051")
    qry.add_argument("--token-file", help="file holding the bearer token (else $FEDFINGPT_TOKEN)")
    qry.add_argument("--ca", help="CA certificate of the server (PEM)")
    qry.add_argument("--cert", help="client certificate for mutual TLS")
    qry.add_argument("--key", help="client key for mutual TLS")
    qry.add_argument("--insecure", action="store_true", help="plaintext (a server started with --insecure)")

    enc = sub.add_parser("enclave", help="the inference service's enclave: measurement and sealed adapters")
    esub = enc.add_subparsers(dest="enclave_command", required=True)
    seal = esub.add_parser("seal", help="seal an adapter folder so that only this serving build can open it")
    _add_config_args(seal, what="the service's config (as for serve)")
    seal.add_argument("--adapter", required=True, help="adapter folder to seal")
    seal.add_argument("--to", required=True, help="output file, ending in .sealed")
    meas = esub.add_parser("measure", help="the measurement a client should expect from `fedfingpt serve CONFIG`")
    _add_config_args(meas, what="the service's config (as for serve)")

    aud = sub.add_parser("audit", help="the inference service's audit trail")
    asub = aud.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser("verify", help="check the hash chain: any edited, removed or reordered line is named")
    ver.add_argument("file", help="audit JSONL file (serving.audit_log)")

    certs = sub.add_parser("certs", help="TLS certificates")
    csub = certs.add_subparsers(dest="certs_command", required=True)
    dev = csub.add_parser("dev", help="a local CA, a server certificate for localhost and a client certificate")
    dev.add_argument("out", help="folder to write ca.pem, server.pem/.key, client.pem/.key into")
    dev.add_argument("--host", action="append", help="server name or IP (default: localhost and 127.0.0.1)")

    data = sub.add_parser("data", help="a bank's data folder: check it against the data contract, write a data card")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser("check", help="validate FOLDER (every bad row named), print and write its data card")
    chk.add_argument("folder", help="the bank's data folder (docs/bank-data.md)")
    chk.add_argument("--config", help="job YAML whose gate and data.scrub sections the PII scan uses (default: "
                     "embedded)")
    chk.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of that config")
    chk.add_argument("--out", help="where the data card goes (default: runs/data-check-FOLDERNAME)")
    chk.add_argument("--label-map", help="the folder's label names, e.g. 'bearish=negative,neutral=neutral,"
                     "bullish=positive'")
    chk.add_argument("--accept-skips", action="store_true", help="pass although rows are bad (they are skipped and "
                     "counted, as a bank with node config accept-skips=true trains)")
    chk.add_argument("--scrub", help="scrub policy to report with (as node config scrub)")
    chk.add_argument("--no-pii", action="store_true", help="skip the PII scan (fast: the card then has no PII counts)")
    sim = dsub.add_parser("simulate-banks", help="write each simulated bank's rows as a bank folder (the contract)")
    _add_config_args(sim)
    aml = sub.add_parser("aml", help="AML cases: list them, and show one's money path as a picture, GraphML or Cypher")
    asub = aml.add_subparsers(dest="aml_command", required=True)
    for name, what in (("list", "the scenario's AML cases (or a bank folder's): number, bank, label, size"),
                       ("show", "one case's transfer graph: PNG/SVG picture, GraphML and Cypher for a graph database")):
        p = asub.add_parser(name, help=what)
        if name == "show":
            p.add_argument("case", help="the case's number in `fedfingpt aml list`, or its id")
            p.add_argument("--format", default="png,graphml,cypher", help="any of png, svg, graphml, cypher "
                           "(comma-separated; default: png,graphml,cypher)")
            p.add_argument("--names", action="store_true", help="show holder names and account numbers (default: "
                           "the narrative's letters, banks and countries only)")
        _add_config_args(p)
        p.add_argument("--bank-data", help="a bank's data folder (docs/bank-data.md): its transactions' cases instead "
                       "of the scenario's")
    _add_deploy_parser(sub)

    demo = sub.add_parser("demo", help="the main job on its embedded default (same as `simulate` with no config)")
    demo.add_argument("--out", help="output folder")
    return ap


def _add_deploy_parser(sub) -> None:
    dep = sub.add_parser("deploy", help="real federated rounds on Flower's Deployment Engine (SuperLink, SuperNodes)")
    dsub = dep.add_subparsers(dest="deploy_command", required=True)

    def link_args(p, what="the SuperLink"):
        p.add_argument("--superlink", default="127.0.0.1:9092", help=f"{what} as HOST:PORT (default 127.0.0.1:9092)")
        p.add_argument("--ca", help="CA certificate (PEM) that signed the SuperLink's certificate")
        p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (one-machine tests)")

    keys = dsub.add_parser("keys", help="a bank's SuperNode key pair: BANK.key (private, 0600) and BANK.pub")
    keys.add_argument("--bank-id", type=int, required=True)
    keys.add_argument("--out", default="keys", help="folder (default: keys)")
    keys.add_argument("--force", action="store_true", help="replace an existing key (register the new one)")

    link = dsub.add_parser("superlink", help="the coordinator's SuperLink: TLS and SuperNode authentication")
    link.add_argument("--certs", help="folder with ca.pem, server.pem, server.key (`fedfingpt certs dev`)")
    link.add_argument("--ssl-ca-certfile")
    link.add_argument("--ssl-certfile")
    link.add_argument("--ssl-keyfile")
    link.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    link.add_argument("--port", type=int, default=9092, help="the SuperLink's one HTTPS port (default 9092)")
    link.add_argument("--state", default="runs/deploy/superlink", help="the SuperLink's database and FLWR_HOME")
    link.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (tests only)")

    reg = dsub.add_parser("register", help="register banks' public keys with the SuperLink (flwr supernode register)")
    reg.add_argument("public_keys", nargs="+", help="BANK.pub files from `fedfingpt deploy keys`")
    link_args(reg)
    reg.add_argument("--home", default="runs/deploy/coordinator", help="the coordinator's FLWR_HOME")

    node = dsub.add_parser("supernode", help="a bank's SuperNode with its own node config")
    node.add_argument("--bank-id", type=int, required=True)
    node.add_argument("--bank-data", help="this bank's own data folder in the data contract (docs/bank-data.md); "
                      "check it first with `fedfingpt data check`")
    node.add_argument("--label-map", help="the folder's label names, e.g. 'bearish=negative,neutral=neutral,"
                      "bullish=positive'")
    node.add_argument("--accept-skips", action="store_true", help="train although the folder has bad rows "
                      "(skipped and counted)")
    node.add_argument("--scrub", help="PII scrub policy of the bank's rows: an action (redact/mask/hash/drop), "
                      "'default=redact,US_SSN=drop', or off (default: the scenario's data.scrub, redact)")
    node.add_argument("--num-banks", type=int, help="without --bank-data: train on partition --bank-id of "
                      "--num-banks of the public sets, as the simulation does")
    link_args(node)
    node.add_argument("--key", help="the bank's private key (BANK.key from `fedfingpt deploy keys`)")
    node.add_argument("--data-dir", help="this bank's data folder (else the scenario's data.data_dir)")
    node.add_argument("--privacy-epsilon", type=float, help="this bank's DP budget (local DP)")
    node.add_argument("--lora-rank", type=int, help="the LoRA rank this bank trains (HetLoRA)")
    node.add_argument("--extra-train", help="this bank's own instruction JSONL, added to its training rows")
    node.add_argument("--state-dir", help="what never leaves the bank: privacy ledger, FedSA B, Flower's state "
                      "(default runs/deploy/bank-N)")
    node.add_argument("--runtime-port", type=int, default=9094, help="the SuperNode's local Runtime API port")
    node.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                      help="process: one long-lived ClientApp process (default); subprocess: Flower's fresh "
                           "flwr-clientapp per message")
    node.add_argument("--max-wait-s", type=float, help="give up connecting to the SuperLink after this long")
    node.add_argument("--timings", help="JSONL file: one line per message handled by the long-lived process")
    node.add_argument("--rejoin-wait-s", type=float, default=120,
                      help="keep asking a SuperLink that refuses this node for this long (after a crash it is "
                           "refused until marked offline, about a minute; default 120, 0 = give up at once)")

    run = dsub.add_parser("run", help="run a scenario on the SuperLink (flwr run), resuming from its checkpoints")
    _add_config_args(run)
    link_args(run)
    run.add_argument("--home", default="runs/deploy/coordinator", help="the coordinator's FLWR_HOME")
    run.add_argument("--wait-banks", type=int, help="wait until this many banks are online (default num_banks)")
    run.add_argument("--wait-s", type=float, default=300, help="longest wait for the banks (default 300 s)")

    stop = dsub.add_parser("stop", help="stop a run (flwr stop); `deploy run` again resumes it")
    stop.add_argument("run_id", type=int)
    link_args(stop)
    stop.add_argument("--home", default="runs/deploy/coordinator", help="the coordinator's FLWR_HOME")

    worker = dsub.add_parser("worker", help="the long-lived ClientApp process of a SuperNode in process isolation")
    worker.add_argument("--runtime-api-address", default="127.0.0.1:9094")
    worker.add_argument("--parent-pid", type=int)
    worker.add_argument("--timings")
    worker.add_argument("--poll-s", type=float, default=0.2)


def _deploy(args) -> int:
    from . import deploy

    if args.deploy_command == "keys":
        from .common.certs import make_node_key_pair

        key, pub = make_node_key_pair(args.out, f"bank-{args.bank_id}", overwrite=args.force)
        print(f"{key}\n{pub}")
        print(f"keep {key.name} at the bank; send {pub.name} to the coordinator to register", file=sys.stderr)
    elif args.deploy_command == "superlink":
        certs = None if args.insecure else deploy.ServerCerts.from_args(args.certs, args.ssl_ca_certfile,
                                                                        args.ssl_certfile, args.ssl_keyfile)
        deploy.start_superlink(host=args.host, port=args.port, state_dir=args.state, certs=certs)
    elif args.deploy_command == "register":
        deploy.write_connection(args.home, args.superlink, args.ca, args.insecure)
        for name, node_id in deploy.register_banks(args.home, args.public_keys).items():
            print(f"{name}: SuperNode {node_id}")
    elif args.deploy_command == "supernode":
        return deploy.run_supernode(
            superlink=args.superlink, bank_id=args.bank_id, num_banks=args.num_banks, ca=args.ca, key=args.key,
            insecure=args.insecure, runtime_port=args.runtime_port, isolation=args.isolation,
            state_dir=args.state_dir, data_dir=args.data_dir, privacy_epsilon=args.privacy_epsilon,
            lora_rank=args.lora_rank, extra_train=args.extra_train, max_wait_s=args.max_wait_s, timings=args.timings,
            rejoin_wait_s=args.rejoin_wait_s, bank_data=args.bank_data, label_map=args.label_map,
            accept_skips=args.accept_skips, scrub=args.scrub)
    elif args.deploy_command == "run":
        cfg = _config(args)
        code, _ = deploy.run_federation(cfg, superlink=args.superlink, ca=args.ca, insecure=args.insecure,
                                        home=args.home, run_dir=args.out, wait_banks=args.wait_banks,
                                        wait_s=args.wait_s)
        return code
    elif args.deploy_command == "stop":
        deploy.stop_run(args.run_id, superlink=args.superlink, ca=args.ca, insecure=args.insecure, home=args.home)
    elif args.deploy_command == "worker":
        return deploy.serve_worker(args.runtime_api_address, args.parent_pid, args.timings, args.poll_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "query" and not any(x.startswith("-") for x in extra):
        args.texts = [*args.texts, *extra]  # texts after the options: `query sentiment --ca ca.pem "text"`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # our own progress at INFO; other libraries' (alembic, bitsandbytes, Ray, httpx) only from WARNING up
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("fedfingpt").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "deploy":  # before the imports below: a SuperNode's supervisor needs no torch
        from .deploy import DeployError

        try:
            return _deploy(args)
        except (DeployError, ConfigError, FileExistsError) as err:
            print(f"fedfingpt: error: {err}", file=sys.stderr)
            return 2
    progress = not args.quiet
    from . import jobs
    from .common.adapter import AdapterError
    from .common.models import ModelLoadError
    from .client.privacy import LedgerError
    from .common.tasks.sentiment_data import DataFormatError
    from .common.tasks.aml_scenario import AmlScenarioError
    from .simulations.partition import PartitionError
    from .simulations.run import SimulationError

    try:
        if args.command == "models":
            cfg = _config(args)
            if args.base:
                cfg.model.base = args.base
            from .common.models import resolve_base

            where = resolve_base(cfg.model)
            print(where)
        elif args.command == "train":
            _report(jobs.run_train(_config(args), args.out, progress))
        elif args.command in ("simulate", "demo"):
            from .simulations.run import simulate

            cfg = load_config(None) if args.command == "demo" else _config(args)
            _report_simulation(simulate(cfg, args.out, progress=progress))
        elif args.command == "data":
            return _data(args, progress)
        elif args.command == "aml":
            return _aml(args)
        elif args.command == "serve":
            return _serve(args)
        elif args.command == "query":
            return _query(args)
        elif args.command == "enclave":
            return _enclave(args)
        elif args.command == "audit":
            from .server.inference.audit import verify

            report = verify(args.file)
            if not report.ok:
                print(f"fedfingpt: audit trail {args.file} is broken: {report.problem}", file=sys.stderr)
                return 1
            print(f"{args.file}: intact, {report.lines} records, last hash {report.last_hash[:16]}...")
        elif args.command == "certs":
            from .common.certs import make_dev_certs

            paths = make_dev_certs(args.out, tuple(args.host) if args.host else ("localhost", "127.0.0.1"))
            print("\n".join(str(p) for p in paths.values()))
            print("development certificates only: production uses the bank's own PKI", file=sys.stderr)
        elif args.command == "privacy":
            from .client.privacy import PrivacyLedger

            print(json.dumps(PrivacyLedger.read(args.folder).summary(), indent=2))
        elif args.command == "eval":
            flags = {"data.eval_sets": [x.strip() for x in args.sets.split(",") if x.strip()] if args.sets else None,
                     "data.eval_limit": (args.limit or None) if args.limit is not None else "keep",  # 0 = every row
                     "eval.method": args.method, "eval.calibrate": True if args.calibrate else None}
            overrides = dict(parse_override(x) for x in (args.set or []))
            overrides.update({k: v for k, v in flags.items() if v is not None and v != "keep"})
            cfg = load_config(args.config, overrides)
            _report(jobs.run_eval(cfg, args.adapter, args.out, progress))
    except (ConfigError, ModelLoadError, AdapterError, DataFormatError, FileNotFoundError,
            PartitionError, SimulationError, LedgerError, AmlScenarioError) as err:
        print(f"fedfingpt: error: {err}", file=sys.stderr)
        return 2
    return 0


def _aml_cases(args) -> list:
    """The cases `fedfingpt aml` lists and shows, in one fixed order: the scenario's (every bank's, held-out ones
    included), or those built from a bank folder's transactions."""
    from .common.tasks.aml_scenario import aml_split, build

    cfg = _config(args)
    if args.bank_data:
        from .common.bank_folder import BankDataError, read_bank_folder

        bf = read_bank_folder(args.bank_data)
        if bf.aml is None:
            raise BankDataError(f"{args.bank_data}: no transactions (transactions.csv, amlsim/ or amlworld/); see "
                                "docs/bank-data.md")
        cases = build(bf.aml, cfg.data.aml, cfg.data.seed, None)
    else:
        split = aml_split(cfg.data, cfg.federation.num_banks)
        cases = [c for bank in split.train for c in bank] + split.test
    return sorted(cases, key=lambda c: c.id)


def _aml(args) -> int:
    from .common.metrics import format_markdown_table
    from .common.tasks import aml_graph

    cases = _aml_cases(args)
    if args.aml_command == "list":
        print(format_markdown_table([{"case": i, "bank": c.bank, "label": c.typology if c.suspicious else "none",
                                      "transfers": len(c.transactions), "accounts": len(
                                          {a for t in c.transactions for a in (t.src, t.dst)})}
                                     for i, c in enumerate(cases)]))
        return 0
    want = args.case.strip()
    found = [c for c in cases if c.id == want] or ([cases[int(want)]] if want.isdigit() and int(want) < len(cases)
                                                    else [])
    if not found:
        print(f"fedfingpt: error: no case {want!r} among the {len(cases)} cases; give a number from `fedfingpt aml "
              "list` (with the same --config / --bank-data) or a case id", file=sys.stderr)
        return 2
    formats = tuple(f.strip().lower() for f in args.format.split(",") if f.strip())
    try:
        paths = aml_graph.export(found[0], args.out or "runs/aml-cases", formats, names=args.names)
    except ValueError as err:
        print(f"fedfingpt: error: --format: {err}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


def _data(args, progress: bool) -> int:
    from pathlib import Path

    from .common.bank_folder import BankDataError, card_markdown, data_card, parse_label_map, read_bank_folder, \
        require_usable
    from .common.report import write_text_atomic

    cfg = _config(args)
    if args.data_command == "simulate-banks":
        from .simulations.bank_folders import write_simulated_banks

        out = Path(args.out or Path(cfg.output_dir) / f"{cfg.name}-bank-folders")
        for folder in write_simulated_banks(cfg, out):
            print(folder)
        return 0
    try:
        bf = read_bank_folder(args.folder, parse_label_map(args.label_map, "--label-map"))
    except BankDataError as err:
        print(f"fedfingpt: error: {err}", file=sys.stderr)
        return 2
    public = None
    if cfg.data.data_dir or os.environ.get("FEDFINGPT_DATA_DIR"):
        from .common.tasks.sentiment_data import fingpt_sentiment_splits

        public = fingpt_sentiment_splits(cfg.data.data_dir)["test"]
    scrub = None
    if not args.no_pii:
        from .common.nodeconfig import NodeConfig, NodeConfigError
        from .common.pii.scrub import Scrubber

        try:
            policy = NodeConfig(0, 1, scrub=args.scrub).scrub_policy(cfg.data.scrub)
        except NodeConfigError as err:
            print(f"fedfingpt: error: --scrub: {err}", file=sys.stderr)
            return 2
        scrub = Scrubber(cfg.gate, policy.model_copy(update={"enabled": True}))
    card = data_card(bf, public, scrub)
    out = Path(args.out or Path(cfg.output_dir) / f"data-check-{Path(args.folder).resolve().name}")
    write_text_atomic(out / "data-card.json", json.dumps(card, indent=2) + "\n")
    write_text_atomic(out / "data-card.md", card_markdown(card))
    print(card_markdown(card))
    print(f"data card: {out / 'data-card.json'} and data-card.md")
    try:
        require_usable(bf, args.accept_skips)
    except BankDataError as err:
        print(f"fedfingpt: {err}", file=sys.stderr)
        return 1
    note = f" ({bf.bad_rows} bad rows accepted as skipped)" if bf.bad_rows else ""
    print(f"{args.folder}: usable{note}")
    return 0


def _serve(args) -> int:
    import signal
    import threading

    from .server.inference.service import InferenceServer, ServeError

    overrides = dict(parse_override(x) for x in (args.set or []))
    if args.port is not None:
        overrides["serving.port"] = args.port
    if args.insecure:
        overrides["serving.insecure"] = True
    cfg = load_service_config(args.config, overrides)
    try:
        server = InferenceServer(cfg).start()
    except ServeError as err:
        print(f"fedfingpt: error: {err}", file=sys.stderr)
        return 2
    print(f"listening on {cfg.serving.host}:{server.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


def _enclave(args) -> int:
    from .common.adapter import read_manifest
    from .common.models import folder_sha256, resolve_base
    from .enclave.serving import make_enclave, seal_adapter_file, serving_measurement
    from .server.inference.model_server import SERVED_CODE

    cfg = load_service_config(args.config, dict(parse_override(s) for s in (args.set or [])))
    base_sha = folder_sha256(resolve_base(cfg.model))
    if args.enclave_command == "seal":
        if cfg.serving.enclave == "none":
            print("fedfingpt: error: set serving.enclave (software or gramine-sgx) to seal for it", file=sys.stderr)
            return 2
        out = seal_adapter_file(make_enclave(cfg, base_sha, SERVED_CODE), args.adapter, args.to)
        print(out, file=sys.stderr)
        # what clients should expect from the service configured to serve this sealed file
        cfg.serving.adapter = str(out)
        adapter_sha = read_manifest(args.adapter)["weights_sha256"]
    else:
        adapter_sha = ""
        if cfg.serving.adapter and cfg.serving.adapter.endswith(".sealed"):
            print("fedfingpt: error: a sealed adapter's hash is known only inside the enclave; `fedfingpt enclave "
                  "seal` prints the measurement when it seals", file=sys.stderr)
            return 2
        if cfg.serving.adapter:
            adapter_sha = read_manifest(cfg.serving.adapter)["weights_sha256"]
    m = serving_measurement(cfg, base_sha, adapter_sha, SERVED_CODE)
    print(json.dumps({"combined": m.combined, "code": m.code, "base_model": m.base_model, "adapter": m.adapter,
                      "config": m.config}, indent=2))
    return 0


def _query(args) -> int:
    from .api.sdk import InferenceClient, InferenceError

    token = (open(args.token_file).read().strip() if args.token_file else os.environ.get("FEDFINGPT_TOKEN", ""))
    if not token:
        print("fedfingpt: error: give --token-file or set FEDFINGPT_TOKEN", file=sys.stderr)
        return 2
    try:
        with InferenceClient(args.target, token, ca_cert=args.ca, client_cert=args.cert, client_key=args.key,
                             insecure=args.insecure) as client:
            if args.what == "info":
                from google.protobuf.json_format import MessageToDict

                print(json.dumps(MessageToDict(client.model_info()), indent=2))
            else:
                if not args.texts:
                    print("fedfingpt: error: give the texts to classify", file=sys.stderr)
                    return 2
                for text, r in zip(args.texts, client.classify(args.texts).results):
                    if r.status == "PERMISSION_DENIED":
                        print(f"blocked  (the policy blocks {', '.join(r.gate.blocked)})  item {r.index}")
                        continue
                    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.probabilities.items()))
                    print(f"{r.label:8s} ({probs})  {text[:60]}")
    except (InferenceError, ValueError) as err:
        print(f"fedfingpt: error: {err}", file=sys.stderr)
        return 1
    return 0


def _report(summary: dict) -> None:
    from .common.metrics import format_markdown_table

    cols = ["setting", "dataset", "method", "n", "accuracy", "weighted_f1", "macro_f1", "ece"]
    print()
    print(format_markdown_table([{k: r.get(k) for k in cols} for r in summary["rows"]], cols))
    print()
    for key in ("adapter", "metrics", "table", "plot"):
        if key in summary:
            print(f"{key:>8}: {summary[key]}")
    if "train" in summary:
        print(f"   train: {json.dumps(summary['train'])}")


def _report_simulation(summary: dict) -> None:
    """The run's final scores (the last round's, on the full server test sets) and where its files are."""
    last = next((h for h in reversed(summary.get("history") or []) if h.get("eval")), None)
    print()
    if last is None:
        print("(no round was scored)")
    else:
        print(f"final global adapter (round {last['round']}):")
        for r in last["eval"]:
            if "weighted_f1_ci95" in r:
                lo, hi = r["weighted_f1_ci95"]
                print(f"  {r['dataset'].upper():>5} weighted F1 {r['weighted_f1']:.3f}  95% CI [{lo:.3f}, {hi:.3f}]  "
                      f"accuracy {r['accuracy']:.3f}  ({r['n']} rows)")
            elif r["dataset"] == "aml":
                print(f"  {'AML':>5} F1 {r['f1']:.3f}  PR-AUC {r['pr_auc']:.3f}  recall {r['recall']:.3f}  "
                      f"({r['n']} held-out cases)")
    print()
    for key in ("report", "metrics", "plot", "partition", "partition_plot", "aml_partition"):
        if summary.get(key):
            print(f"{key:>15}: {summary[key]}")


if __name__ == "__main__":
    sys.exit(main())
