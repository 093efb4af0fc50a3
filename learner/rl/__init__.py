"""Off-policy actor-critic (SAC), shared by the state-based experts and latent-policy RL."""
