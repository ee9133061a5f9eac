"""The whole pipeline's steps, the experiments' plan and comparison, and what its dashboard shows."""
