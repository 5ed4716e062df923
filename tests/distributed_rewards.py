"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2`: every process builds the scorer (as
the recipe does on every rank), scores its own slice of a fixed set of completions, and the rewards and metrics are
gathered the way GRPOTrainer gathers them (rewards concatenated, each logged metric's per-process mean averaged)."""

import json
import sys
from collections import defaultdict

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object

from grape_hf import GRAPERewardFunction, RankScorer, load_retriever

CORPUS = [f"a photo of {n} {thing}" for n in ("one", "two", "three", "four") for thing in ("dogs", "cats", "cars")]
COMPLETIONS = [
    "two dogs",
    "a picture of three cats",
    "",
    "four cars on a road",
    "\u200b",
    "one cat",
    "cars",
    "three dogs playing",
]
TARGETS = [3, 7, 0, 11, 2, 1, [8, 2], 6]


def rewards_and_metrics(scorer, completions, targets, sampled: bool):
    logged = defaultdict(list)
    reward = GRAPERewardFunction(scorer, reward="rank")
    values = reward(completions=completions, target_id=targets, log_metric=lambda n, v: logged[n].append(v))
    return values, {name: sum(v) / len(v) for name, v in logged.items()}


def main(out_path: str, cache_dir: str) -> None:
    state = PartialState(cpu=True)  # as the recipe's use_cpu: true does
    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    result = {"num_processes": state.num_processes}
    for sampled in (None, 5):
        scorer = RankScorer(retriever, CORPUS, cache_dir=cache_dir, sampled_negatives=sampled, show_progress_bar=False)
        per_process = len(COMPLETIONS) // state.num_processes
        start = state.process_index * per_process
        values, metrics = rewards_and_metrics(
            scorer, COMPLETIONS[start : start + per_process], TARGETS[start : start + per_process], sampled
        )
        rewards = gather_object(values)
        # GRPOTrainer's flush of log_metric values: sorted keys, per-process mean, gathered and averaged.
        averaged = {name: gather(torch.tensor([metrics[name]])).mean().item() for name in sorted(metrics)}
        result["sampled" if sampled else "exact"] = {"rewards": rewards, "metrics": averaged}
        result.setdefault("cache_hits", []).append(gather_object([scorer.cache_hit]))
    if state.is_main_process:
        with open(out_path, "w") as f:
            json.dump(result, f)
    # Tear the gloo group down before the interpreter exits: left to the garbage collector, its worker threads were
    # once destroyed while still joinable (a rare SIGABRT, "terminate called without an active exception", in CI).
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
