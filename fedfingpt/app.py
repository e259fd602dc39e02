"""The Flower App's bank side (pyproject [tool.flwr.app.components] clientapp): the bank's ClientApp with the
simulation's mod, so that under `flwr run . local`, or on a SuperNode given num-partitions instead of its own
folder, a simulated bank finds the folder the simulation writes for it (simulations/bank_folders.py). A bank with
its own folder (node config bank-data) is not touched by the mod.

    clientapp           the bank (Message API)
    secure_clientapp    the bank under SecAgg+ (scenario privacy.secure_aggregation)
"""

from __future__ import annotations

from .client.app import make_client_app
from .client.secure import make_secure_client_app
from .simulations.bank_folders import simulated_banks_mod

clientapp = make_client_app(outer_mods=[simulated_banks_mod])
secure_clientapp = make_secure_client_app(outer_mods=[simulated_banks_mod])
