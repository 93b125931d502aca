"""Training: every stage is an Objective plugged into the one loop.

- `config`: typed settings (`RunConfig` shared by all stages; `TrainConfig` read by the loop;
  `PretrainConfig`, `SFTConfig`, `RLConfig` per stage) with their defaults and flag help.
- `loop`: `train()` and its `Trainer` (optimizer, schedule, budget, evaluation, checkpoints,
  exact resume); `optim`: optimizers and the schedule; `metrics`: the log and curves.
- stages: `pretrain` (next-token prediction), `sft` (chat fine-tuning), `rl` (GRPO-style);
  `start` loads the base run a derived stage starts from.
- other objectives on the same loop: `masked_lm` (encoder), `seq2seq` (encoder-decoder).
"""
