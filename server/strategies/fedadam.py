"""FedAdam on LoRA: Flower's FedAdam (Reddi et al.) applied to the validated mean of the banks' LoRA arrays."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from .fedavg import LoraFedAvg


class LoraFedAdam(FedAdam, LoraFedAvg):
    """Adam on the pseudo-gradient (mean − global). LoRA updates are ~1e-3 per coordinate, so eta is ~1e-3 and
    tau far below Flower's default 1e-3. The moments live in the server process: a resumed run restarts them."""

    def __init__(self, *, eta: float, beta_1: float, beta_2: float, tau: float, min_valid_updates: int = 1,
                 max_examples: float = float("inf"), round_offset: int = 0, **kwargs) -> None:
        FedAdam.__init__(self, eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)
        self.setup_lora(min_valid_updates=min_valid_updates, max_examples=max_examples, round_offset=round_offset)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = FedAdam.aggregate_train(self, server_round, replies)
        return self.in_reference_dtype(arrays), metrics
