"""The bank: the one local training loop (and later the Flower ClientApp, DP-SGD and the privacy ledger)."""
