"""AML scenarios: the cases each federation member (bank) trains on, and the held-out cases everyone is scored on.

Sources (data.aml.source):
- generated: the seeded synthetic world of `aml_generator`, one bank per federation member, each with its own
  typology mix (non-IID by default; see `default_banks`);
- amlsim-export: AMLSim's export with its own banks, a natural partition (federation.num_banks must equal them);
- amlsim-alerts, amlsim-nodes, amlworld: banks dealt into federation members by a stable hash (`assign_banks`).

Members are the source's banks in sorted order (bank 0 = the first). A case belongs to the bank that holds its focus
account; cases focused at a bank outside the federation (an offshore account) are held out for evaluation only and
counted. Each member's cases are split per (bank, typology) group: a seeded `test_share` of every group is held
out, so every typology a bank has appears in the test set; then a `val_share` of each group stays with the bank
as validation cases it never trains on (for the risk score's calibration and the alert threshold).
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AmlConfig, DataConfig
from .aml import NONE, TYPOLOGIES, AmlCase, AmlDataset

log = logging.getLogger("fedfingpt.aml")


class AmlScenarioError(ValueError):
    """A scenario the AML data cannot give (the message names the key to change)."""


@dataclass
class AmlSplit:
    source: str
    banks: list[str]  # federation member index -> the source's bank name
    train: list[list[AmlCase]]  # per member
    test: list[AmlCase]  # held out, all banks (and cases focused outside the federation)
    outside: int = 0  # cases focused at banks outside the federation (in `test` only)
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows the loader skipped, by reason
    val: list[list[AmlCase]] = field(default_factory=list)  # per member: its validation cases (data.aml.val_share)

    def bank_test(self, bank: int) -> list[AmlCase]:
        return [c for c in self.test if c.bank == self.banks[bank]]

    def typologies(self, bank: int) -> set[str]:
        """Typologies in this member's training cases."""
        return {c.typology for c in self.train[bank] if c.suspicious}

    def table(self) -> list[dict]:
        """Per member: training cases by typology, and held-out cases (the scenario report)."""
        rows = []
        for b, name in enumerate(self.banks):
            count = Counter(c.typology for c in self.train[b])
            rows.append({"bank": b, "name": name, "train_cases": len(self.train[b]),
                         "test_cases": len(self.bank_test(b)), **{t: count.get(t, 0) for t in (*TYPOLOGIES, NONE)}})
        return rows


def load_world(aml: AmlConfig, data_dir: str | None, num_banks: int) -> AmlDataset:
    """The AML data set of the scenario, with its banks dealt into `num_banks` members where the source has no
    natural partition."""
    from . import aml_data

    if aml.source == "generated":
        from .aml_generator import GeneratorConfig, default_banks, generate

        g = aml.generator
        specs = default_banks(num_banks)
        for bank, mix in g.typology_mix.items():
            if not 0 <= bank < num_banks:
                raise AmlScenarioError(f"data.aml.generator.typology_mix: bank {bank} is not one of the "
                                       f"{num_banks} banks (0..{num_banks - 1})")
            specs[bank].typology_mix = {t: float(mix.get(t, 0.0)) for t in TYPOLOGIES}
        return generate(GeneratorConfig(
            num_banks=num_banks, accounts_per_bank=g.accounts_per_bank, days=g.days, tx_per_account=g.tx_per_account,
            laundering_rate=g.laundering_rate, reporting_threshold=g.reporting_threshold, cross_border=g.cross_border,
            banks=specs, seed=g.seed, difficulty=g.difficulty, lookalikes=g.lookalikes))
    from .sentiment_data import data_dir_from_env

    path = Path(aml.path).expanduser()
    if not path.is_absolute():
        path = data_dir_from_env(data_dir) / path
    if not path.is_dir():
        raise AmlScenarioError(f"data.aml.path: {path} is not a folder; point it at the {aml.source} files "
                               "(relative paths are under the data folder, e.g. aml/amlsim_4bank_export)")
    if aml.source == "amlsim-export":
        return aml_data.load_amlsim_export(path, on_bad=aml.on_bad)
    if aml.source == "amlsim-alerts":
        return aml_data.load_amlsim_alerts(path, num_banks=num_banks, on_bad=aml.on_bad)
    if aml.source == "amlsim-nodes":
        return aml_data.load_amlsim_nodes(path, num_banks=num_banks, on_bad=aml.on_bad)
    return aml_data.assign_banks(aml_data.load_amlworld(path, on_bad=aml.on_bad), num_banks)


def members_of(ds: AmlDataset, aml: AmlConfig, num_banks: int) -> list[str]:
    if aml.source == "generated":
        return [f"bank_{b}" for b in range(num_banks)]
    if aml.source == "amlsim-export":
        names = ds.banks()
        if len(names) != num_banks:
            raise AmlScenarioError(f"data.aml: the AMLSim export at {aml.path} has {len(names)} banks "
                                   f"({', '.join(names)}), a natural partition: set federation.num_banks to "
                                   f"{len(names)}")
        return names
    return [f"bank_{b}" for b in range(num_banks)]


_SPLITS: dict[tuple, AmlSplit] = {}


def aml_split(data: DataConfig, num_banks: int) -> AmlSplit:
    """The scenario's cases per member and held out; deterministic in the config (cached per process)."""
    key = (data.aml.model_dump_json(), data.data_dir, data.seed, num_banks)
    if key in _SPLITS:
        return _SPLITS[key]
    aml = data.aml
    ds = load_world(aml, data.data_dir, num_banks)
    banks = members_of(ds, aml, num_banks)
    cases = build(ds, aml, data.seed, set(banks))
    rng = random.Random(data.seed)
    groups: dict[tuple[str, str], list[AmlCase]] = defaultdict(list)
    test: list[AmlCase] = []
    outside = 0
    for c in cases:
        if c.bank in banks:
            groups[(c.bank, c.typology)].append(c)
        else:
            test.append(c)
            outside += 1
    train: dict[str, list[AmlCase]] = {b: [] for b in banks}
    val: dict[str, list[AmlCase]] = {b: [] for b in banks}
    for (bank, _), group in sorted(groups.items()):
        group = sorted(group, key=lambda c: c.id)
        rng.shuffle(group)
        k = int(round(aml.test_share * len(group))) if len(group) > 1 else 0
        v = int(round(aml.val_share * len(group))) if len(group) - k > 1 else 0
        test.extend(group[:k])
        val[bank].extend(group[k:k + v])
        train[bank].extend(group[k + v:])
    empty = [b for b in banks if not train[b]]
    if empty:
        raise AmlScenarioError(f"data.aml ({aml.source}): bank(s) {', '.join(empty)} have no training cases; use "
                               "fewer federation.num_banks, more data (aml.generator.accounts_per_bank, "
                               "laundering_rate) or a lower aml.test_share")
    split = AmlSplit(ds.source, banks, [train[b] for b in banks], sorted(test, key=lambda c: c.id), outside,
                     dict(ds.skipped), [val[b] for b in banks])
    if ds.skipped:
        log.warning("AML data %s: skipped rows %s (data.aml.on_bad=skip)", ds.source, ds.skipped)
    if outside:
        log.info("AML data %s: %d cases focused outside the federation's banks are held out for evaluation only",
                 ds.source, outside)
    _SPLITS[key] = split
    return split


def held_out_sample(data: DataConfig, num_banks: int) -> list[AmlCase]:
    """The seeded sample of held-out cases (data.aml.eval_limit) that the server and `fedfingpt train/eval` score."""
    from ..evaluate import sample_rows

    return sample_rows(aml_split(data, num_banks).test, data.aml.eval_limit, data.seed)


def build(ds: AmlDataset, aml: AmlConfig, seed: int, members: set[str]) -> list[AmlCase]:
    from .aml_data import build_cases

    return build_cases(ds, window_days=aml.window_days, negatives_per_positive=aml.negatives_per_positive,
                       seed=seed, max_transactions=aml.max_transactions, members=members)


def mix_to_share(aml_examples: list, other: int, share: float, seed: int, repeat: bool = True) -> list:
    """AML examples repeated (or sampled) to make up `share` of a training set that holds `other` other examples.
    Without `repeat` (local DP accounts per example: a repeated case would be spent twice) they are only sampled."""
    if not aml_examples or other == 0:
        return list(aml_examples)
    target = max(1, int(round(share / (1 - share) * other)))
    if not repeat:
        target = min(target, len(aml_examples))
    order = list(aml_examples)
    random.Random(seed).shuffle(order)
    reps, rest = divmod(target, len(order))
    return order * reps + order[:rest]


def write_aml_report(split: AmlSplit, run_dir: Path) -> Path:
    """aml_partition.md: what each bank trains on, and what is held out."""
    from ..metrics import format_markdown_table
    from ..report import write_text_atomic

    held = Counter(c.typology for c in split.test)
    text = (f"# AML cases per bank ({split.source})\n\n{format_markdown_table(split.table())}\n\n"
            f"Held out for evaluation: {len(split.test)} cases ({', '.join(f'{t} {n}' for t, n in sorted(held.items()))})"
            + (f"; {split.outside} of them are focused at banks outside the federation" if split.outside else "")
            + ".\n" + (f"\nSkipped rows (data.aml.on_bad=skip): {split.skipped}\n" if split.skipped else ""))
    path = Path(run_dir) / "aml_partition.md"
    write_text_atomic(path, text)
    return path
