"""The scheduler service: the only queue, fairness policy, placement."""
