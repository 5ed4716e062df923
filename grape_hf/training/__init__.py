"""Training a rewriter: the arguments, the reward, the trainer and the stages that chain into a run.

`configs` (every stage's argument dataclasses; GRPO's `GRAPEConfig` in `grpo_config`), `rewards`
(`GRAPERewardFunction`, rewards by name), `trainer` (`GRAPETrainer`) with `merged_sampler` (the merged LoRA copy it
samples with) and `group_decoding` (a GRPO group's prompt computed once), `callbacks`, `stages` (what the stages
share; running, evaluating and shipping them), `chain` (`StageChain`: stages one from another, measured and shipped
with their lineage), and one module per stage: `grpo`, `sft`, `distill`, `dpo`.
"""
