"""Central (user-level) differential privacy: Flower's DP strategy wrappers around our LoRA strategies, and the
epsilon the server reports for the noise it added.

Each round releases the mean of the sampled banks' clipped updates plus Gaussian noise of std z·C/m (z the noise
multiplier, C the clipping norm, m the banks sampled): a Gaussian mechanism on each bank's whole contribution.
Over rounds the releases compose; Opacus's RDP accountant does the composition (sampling rate m/N, amplification
only when banks are sampled). With adaptive clipping, Flower splits the noise between the update and the clipped
count so that the whole release keeps the noise multiplier z, and the same accounting holds.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (DifferentialPrivacyClientSideAdaptiveClipping,
                                     DifferentialPrivacyClientSideFixedClipping,
                                     DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping)

from ..common.config import Config
from ..common.privacy import epsilon_of


def sampled_banks(cfg: Config) -> int:
    f = cfg.federation
    return max(int(f.num_banks * f.fraction_train), max(1, f.min_banks))


def wrap_central_dp(cfg: Config, strategy):
    """The strategy wrapped for central DP (banks weighted equally, as the noise calibration assumes), or None."""
    p = cfg.privacy
    if p.mode != "central":
        return None
    strategy.uniform_weights = True
    m = sampled_banks(cfg)
    if p.clipping == "fixed":
        cls = (DifferentialPrivacyServerSideFixedClipping if p.clipping_side == "server"
               else DifferentialPrivacyClientSideFixedClipping)
        return cls(strategy, noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm, num_sampled_clients=m)
    cls = (DifferentialPrivacyServerSideAdaptiveClipping if p.clipping_side == "server"
           else DifferentialPrivacyClientSideAdaptiveClipping)
    # the clipped-count noise must exceed half the noise multiplier for the update noise to keep it overall
    # (Andrew et al.): Flower's default m/20 is far too low for a handful of banks
    count_std = p.clipped_count_stddev or max(m / 20, p.noise_multiplier)
    return cls(strategy, noise_multiplier=p.noise_multiplier, num_sampled_clients=m,
               initial_clipping_norm=p.clipping_norm, target_clipped_quantile=p.target_clipped_quantile,
               clipped_count_stddev=count_std)


def central_epsilon(cfg: Config, releases: int) -> float:
    """User-level epsilon (at privacy.delta) after `releases` noised aggregates."""
    if cfg.privacy.mode != "central" or releases <= 0:
        return 0.0
    q = min(1.0, sampled_banks(cfg) / cfg.federation.num_banks)
    return epsilon_of(cfg.privacy.accountant, [(cfg.privacy.noise_multiplier, q, releases)], cfg.privacy.delta)
