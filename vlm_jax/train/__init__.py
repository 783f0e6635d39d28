"""Train state, optimizer, the jitted step, checkpoints, metrics and the trainer loop."""
