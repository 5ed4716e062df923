"""A chain of training stages measured on the same held-out queries: each stage starts from an earlier one (or the
prompted base model), trains once into its folder of a stage cache, and becomes a row of a results table; a row's
rewriter ships with its chain of stages and their numbers on its card.

This is what a comparison such as `benchmarks/shapes_grape.py` or `benchmarks/multi30k_rank_supervision.py` needs
beyond the stages themselves ([`~grape_hf.training.stages.run_stage`]): which folder holds which method, which
rows a stage trained again invalidates, the lineage of a row, and shipping it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .stages import is_finished, run_stage, ship_rewriter, stage_minutes

# Each stage's module, named on a shipped rewriter's card.
STAGE_MODULES = {stage: f"grape_hf.training.{stage}" for stage in ("sft", "distill", "grpo", "dpo")}


class StageChain:
    """Train stages one after another into `output_dir` and keep one row per method in `rows`.

    A method is a name in `methods` (e.g. `"grape_rank"`) or a variant of one, `<method>_<name>`: the method maps to
    its stage and folder stem, and a variant lives in `<stem>-<name>` (underscores as dashes). A method whose row is
    not trained (the German as is, the prompted base model) is measured with [`StageChain.measure_row`]; a stage
    started from such a row gets no `--init_rewriter`, but `base_overrides` (e.g. the prompt template).

    A stage whose folder is not finished in the cache (a fresh machine) is trained now: it is another model than the
    one a recorded row measured, so that row (and the rows named in `drops`) is measured again.

    Args:
        output_dir (`str` or `Path`): The stage cache.
        methods (`dict[str, tuple[str, str]]`): Method → (stage of [`~grape_hf.training.stages.STAGES`], folder stem).
        configs (`dict[str, str | Path]`): Stage → its recipe config.
        measure (`Callable[[str, str], dict]`): `(method, source)` → the row's metrics, `source` a rewriter folder or
            a model id.
        rows (`dict`, *optional*): Method → row, filled here (e.g. a results file's, to resume).
        overrides (`list[str]`, *optional*): Recipe flags every stage gets (the data, `--use_cpu`), before its own.
        base_overrides (`list[str]`, *optional*): Flags a stage gets when it starts from the base model.
        save (`Callable[[], None]`, *optional*): Called after each new row.
        command (`str`, *optional*): The command line running the chain, recorded in each row trained now.
        log (`Callable[[str], None]`, *optional*): Progress messages.

    Example:
    ```python
    >>> from grape_hf.training.chain import StageChain
    >>> chain = StageChain(
    ...     "outputs/chain",
    ...     methods={"warm_start": ("sft", "sft"), "grape_rank": ("grpo", "grpo-rank")},
    ...     configs={"sft": "recipes/SmolLM2-135M-Instruct/sft/config_multi30k_de.yaml",
    ...              "grpo": "recipes/SmolLM2-135M-Instruct/grpo/config_multi30k_de.yaml"},
    ...     measure=lambda method, source: {"R@10": 0.0},
    ... )
    >>> chain.folder("grape_rank_long").name
    'grpo-rank-long'
    >>> chain.train("warm_start", args=["--max_steps", "4"])  # doctest: +SKIP
    >>> chain.train("grape_rank", start="warm_start")  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        output_dir: str | Path,
        methods: dict[str, tuple[str, str]],
        configs: dict[str, str | Path],
        measure: Callable[[str, str], dict],
        rows: dict | None = None,
        overrides: list[str] | tuple = (),
        base_overrides: list[str] | tuple = (),
        save: Callable[[], None] | None = None,
        command: str | None = None,
        log: Callable[[str], None] = print,
    ):
        unknown = sorted({stage for stage, _ in methods.values()} - set(STAGE_MODULES))
        if unknown:
            raise ValueError(f"methods name the stages {unknown}; the stages are {sorted(STAGE_MODULES)}.")
        missing = sorted({stage for stage, _ in methods.values()} - set(configs))
        if missing:
            raise ValueError(f"no recipe config for the stages {missing}: add them to `configs`.")
        self.output_dir, self.methods, self.configs = Path(output_dir), methods, configs
        self.measure, self.rows = measure, {} if rows is None else rows
        self.overrides, self.base_overrides = list(overrides), list(base_overrides)
        self.save, self.command, self.log = save or (lambda: None), command, log

    def _method(self, method: str) -> tuple[str, str, str]:
        """(prefix, stage, folder stem) of a trained method or a variant of one."""
        for prefix in sorted(self.methods, key=len, reverse=True):
            if method == prefix or method.startswith(prefix + "_"):
                stage, stem = self.methods[prefix]
                return prefix, stage, stem + method[len(prefix) :].replace("_", "-")
        raise ValueError(
            f"{method!r} is not a trained method: use one of {sorted(self.methods)} or <method>_<variant>."
        )

    def is_trained(self, method: str) -> bool:
        """Whether `method` is one a stage trains (not a measured base row such as the prompted model)."""
        return any(method == p or method.startswith(p + "_") for p in self.methods)

    def folder(self, method: str) -> Path:
        """The folder `method`'s stage trains into (finished or not)."""
        return self.output_dir / self._method(method)[2]

    def finished_folder(self, method: str) -> Path:
        """`method`'s folder, which must hold its finished stage (to start from it, sample it or ship it)."""
        folder = self.folder(method)
        if not is_finished(folder):
            raise FileNotFoundError(f"{method}: no finished stage at {folder}; train it first (StageChain.train).")
        return folder

    def measure_row(self, method: str, source: str | Path, **info) -> dict:
        """`method`'s row: measured now with `measure(method, source)` and `info` added, unless it is recorded."""
        if method not in self.rows:
            self.rows[method] = {**self.measure(method, str(source)), **info}
            self.log(f"{method}: " + ", ".join(f"{k} {v}" for k, v in self.rows[method].items() if k.startswith("R@")))
            self.save()
        return self.rows[method]

    def train(
        self, method: str, start: str | None = None, args: list[str] | tuple = (), drops: tuple = (), **info
    ) -> Path:
        """Train `method`'s stage from `start` (a trained method, or a base row / `None`: the base model) with the
        stage's recipe config, `overrides` and `args`, unless its folder is finished; then measure its row, which
        records `started_from`, `train_cpu_minutes` (the stage's recorded wall minutes), `<stage>_args` and
        `command`. `drops` are other rows that depend on this stage's weights (e.g. a best-of-8 of it).

        Returns:
            `Path`: the stage's folder.
        """
        _, stage, _ = self._method(method)
        out = self.folder(method)
        if not is_finished(out):
            for stale in [m for m in (method, *drops) if self.rows.pop(m, None) is not None]:
                self.log(f"{stale}: its recorded row was of an earlier run of {out.name}: measured again after it")
            self.log(f"{method}: {stage} -> {out}")
        if start is not None and self.is_trained(start):
            begin = ["--init_rewriter", str(self.finished_folder(start))]
        else:
            begin = self.base_overrides
        run_stage(stage, self.configs[stage], out, [*self.overrides, *args, *begin])
        recorded = {"started_from": start, "train_cpu_minutes": stage_minutes(out), f"{stage}_args": list(args)}
        self.measure_row(method, out, **recorded, **({"command": self.command} if self.command else {}), **info)
        return out

    def lineage(self, method: str) -> list[str]:
        """The trained stages that led to `method`, first to last (`method` included), following `started_from`."""
        chain = [method]
        while True:
            start = self.rows.get(chain[-1], {}).get("started_from")
            if start is None or not self.is_trained(start) or start in chain:
                return chain[::-1]
            chain.append(start)

    def ship(
        self,
        method: str,
        dest: str | Path,
        before: str,
        zero_shot: str | None = None,
        metric: str = "R@10",
        baseline: str = "previously_shipped",
        metrics: tuple | None = None,
        evaluation: dict | None = None,
        training: dict | None = None,
        keep_tokenizer: bool = True,
        **fields,
    ) -> bool:
        """Ship `method`'s rewriter as `dest` ([`~grape_hf.training.stages.ship_rewriter`]) if it beats the `baseline`
        row (the rewriter shipped now, measured on the same queries) on `metric`, or there is none. Its card holds the
        rows `before` (the query as is), `zero_shot` (the prompted base model), each earlier stage of its lineage,
        `after` (`method`) and the baseline, plus `evaluation`'s fields (split, dataset, sizes); its training record
        holds the method, its stages with their modules, their commands, and `training`'s fields. `keep_tokenizer`
        and `fields` go to [`~grape_hf.training.stages.ship_rewriter`].

        Returns:
            `bool`: whether it shipped.
        """
        from ..metrics import METRICS

        keys = metrics or METRICS
        if method not in self.rows or not self.is_trained(method):
            trained = sorted(m for m in self.rows if self.is_trained(m))
            raise ValueError(f"ship {method!r}: give a trained method with a row ({trained}).")
        new, old = self.rows[method][metric], self.rows.get(baseline, {}).get(metric)
        if old is not None and new <= old:
            self.log(f"not shipped: {method} {metric} {new} does not beat {baseline}'s {old}")
            return False
        lineage = self.lineage(method)
        card = {"before": self.rows[before], **({"zero_shot": self.rows[zero_shot]} if zero_shot else {})}
        card.update({m: self.rows[m] for m in lineage[:-1]})
        card.update(after=self.rows[method], **({baseline: self.rows[baseline]} if old is not None else {}))
        card = {name: {k: row[k] for k in keys if k in row} for name, row in card.items()}
        commands = list(dict.fromkeys(self.rows[m]["command"] for m in lineage if self.rows[m].get("command")))
        record = {
            "method": method,
            "stages": [f"{m} ({STAGE_MODULES[self._method(m)[1]]})" for m in lineage],
            **({"command": " && ".join(commands)} if commands else {}),
            **(training or {}),
        }
        folder, numbers = self.finished_folder(method), {**card, **(evaluation or {})}
        ship_rewriter(folder, dest, numbers, record, keep_tokenizer=keep_tokenizer, **fields)
        self.log(f"shipped {method} ({metric} {new}, against {old}) to {dest}")
        return True
