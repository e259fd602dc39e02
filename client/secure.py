"""The bank's side of secure aggregation (SecAgg+): Flower's `secaggplus_mod` masks the bank's quantized,
example-weighted update so that the server can only unmask the sum over banks. SecAgg+ lives in Flower's legacy
API, so this ClientApp wraps the same round (`client.app.bank_round`) in a legacy NumPyClient.

Used by `fedfingpt simulate` when privacy.secure_aggregation is on; under `flwr run` point the app's clientapp
at `fedfingpt.app:secure_clientapp`.
"""

from __future__ import annotations

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from ..common.adapter import get_lora_arrays, select_parts
from ..common.config import Config
from ..common.runconfig import config_from_context
from .app import bank_round
from .bank import bank_state
from .plan import RoundPlan


class SecureBank(NumPyClient):
    """A bank as a legacy NumPyClient: the shared LoRA arrays travel as a list in the model's order."""

    def __init__(self, cfg: Config, context) -> None:
        self.cfg, self.ctx = cfg, context

    def _names(self, config: dict) -> list[str]:
        state = bank_state(self.cfg, self.ctx)
        return list(select_parts(get_lora_arrays(state.model), RoundPlan.from_config(config).shared))

    def fit(self, parameters, config):
        names = self._names(dict(config))
        if len(parameters) != len(names):
            raise ValueError(f"received {len(parameters)} arrays, the bank's model shares {len(names)}")
        arrays, metrics = bank_round(self.cfg, self.ctx, dict(zip(names, parameters)), dict(config), {})
        return [arrays[n] for n in names], int(metrics["num-examples"]), metrics


def make_secure_client_app(cfg: Config | None = None, outer_mods: list | None = None,
                           bank_cls: type = SecureBank) -> ClientApp:
    def client_fn(context):
        return bank_cls(cfg or config_from_context(context), context).to_client()

    return ClientApp(client_fn=client_fn, mods=[*(outer_mods or []), secaggplus_mod])


app = make_secure_client_app()
