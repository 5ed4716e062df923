"""A `TrainerCallback` that measures retrieval with the rewriter being trained, every few steps."""

from __future__ import annotations

from transformers import TrainerCallback

from ..evaluation import evaluate_retrieval
from ..retrieval.scorer import RankScorer
from ..rewriting.prompts import PromptTemplate
from ..rewriting.rewriter import QueryRewriter


class RetrievalEvalCallback(TrainerCallback):
    """Every `eval_steps` optimizer steps (and at step 0 and the end), rewrite held-out queries greedily with the
    model being trained and log `eval_retrieval/{R@1,R@5,R@10,MRR,nDCG@10,mean_rank}` into the trainer's logs.

    Args:
        scorer ([`~grape_hf.retrieval.scorer.RankScorer`]): The held-out corpus.
        queries (`list[str]`), target_ids (`list`): The held-out queries and their right corpus ids.
        tokenizer: The rewriter's tokenizer.
        template ([`~grape_hf.rewriting.prompts.PromptTemplate`]): The prompt the rewriter is trained with.
        eval_steps (`int`, *optional*, defaults to `20`): How often to measure.
        references (`list[str]`, *optional*): Reference captions for composed queries.
        max_new_tokens (`int`, *optional*, defaults to `32`), batch_size (`int`, *optional*, defaults to `32`).

    `history` keeps `(step, metrics)` pairs for plotting.
    """

    def __init__(
        self,
        scorer: RankScorer,
        queries,
        target_ids,
        tokenizer,
        template: PromptTemplate,
        eval_steps: int = 20,
        references=None,
        max_new_tokens: int = 32,
        batch_size: int = 32,
    ):
        self.scorer = scorer
        self.queries = list(queries)
        self.target_ids = list(target_ids)
        self.tokenizer = tokenizer
        self.template = template
        self.eval_steps = eval_steps
        self.references = references
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.history: list[tuple[int, dict]] = []

    def _measure(self, model, state) -> None:
        if self.history and self.history[-1][0] == state.global_step:
            return
        was_training = model.training
        model.eval()
        rewriter = QueryRewriter(model, self.tokenizer, self.template, max_new_tokens=self.max_new_tokens)
        rewrites = [
            r[0] for r in rewriter.rewrite(self.queries, references=self.references, batch_size=self.batch_size)
        ]
        if was_training:
            model.train()
        metrics = evaluate_retrieval(self.scorer, rewrites, self.target_ids)
        self.history.append((state.global_step, metrics))
        state.log_history.append({"step": state.global_step, **{f"eval_retrieval/{k}": v for k, v in metrics.items()}})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_steps and state.global_step % self.eval_steps == 0:
            self._measure(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._measure(model, state)
