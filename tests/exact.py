"""Ground truth for tiny models: the package's enumeration (``rws.exact``), which
sums probabilities over every latent state and never calls an estimator."""
from rws.exact import (all_states, expected_log_q_under_p, kl_posterior_q,  # noqa: F401
                       latent_grid, log_joint_table, log_px)
