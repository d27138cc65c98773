"""Experiment 1's run at any scale: the `etrm experiment1` command (`command`), the model it
trains (`model`), the one training loop the suite and the fixtures also run (`loop`), its
settings from flags or an origin config (`settings`), checkpoints and resume (`state`),
torchrun processes (`distributed`), W&B (`wandb_log`) and the H7 measurement after a
scenario-C run (`h7_followup`).

Deliberately empty: importing a low module (the loop, the settings) never drags in the
command or the H7 follow-up, which sit in higher layers (tests/test_import_layers.py)."""
