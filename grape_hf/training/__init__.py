"""Training a rewriter: the arguments, the reward, the trainer and the stages that chain into a run.

`configs` (the argument dataclasses), `rewards` (`GRAPERewardFunction`, rewards by name), `trainer`
(`GRAPETrainer`), `group_decoding` (a GRPO group's prompt computed once), `callbacks`, `stages` (what the stages
share), and one module per stage: `grpo`, `sft`, `distill`, `dpo`.
"""
