import math
import pickle

import pytest
import torch

from grape_hf import GRAPERewardFunction, RankScorer, get_reward_funcs
from grape_hf.retrieval.retrievers import Retriever
from grape_hf.training.rewards import LOWEST_REWARD, REWARD_VARIANTS, resolve_reward_variant

CORPUS = [
    "a dog runs on the grass",
    "two men play chess in a park",
    "a red car drives through snow",
    "a woman reads a book on a bench",
]


@pytest.fixture
def scorer(minilm):
    return RankScorer(minilm, CORPUS, show_progress_bar=False)


def custom_reward(stats):
    """A user's own variant, resolved by dotted path."""
    return -stats.ranks.float()


def test_rank_reward_formula(scorer):
    reward = GRAPERewardFunction(scorer, reward="rank")
    completions = ["two men play chess in a park", "a dog", "a red car drives through snow"]
    targets = [1, 1, 1]
    ranks = scorer.ranks(completions, targets).tolist()
    assert ranks[0] == 1 and ranks[1] > 1
    expected = [1 / math.log2(1 + r) for r in ranks]
    assert reward(prompts=["p"] * 3, completions=completions, target_id=targets) == pytest.approx(expected)
    assert reward.__name__ == "grape_rank"


def test_reciprocal_rank_pays_the_first_place_far_above_the_next(scorer):
    completions = ["two men play chess in a park", "a dog", "a red car drives through snow"]
    ranks = scorer.ranks(completions, [1, 1, 1]).tolist()
    values = GRAPERewardFunction(scorer, reward="reciprocal_rank")(completions=completions, target_id=[1, 1, 1])
    assert values == pytest.approx([1 / r for r in ranks])
    assert values[0] == 1.0 and all(v <= 0.5 for v in values[1:])


def test_similarity_and_margin(scorer):
    completions = ["men playing chess", "a car"]
    stats = scorer.rank_stats(completions, [1, 1])
    sim = GRAPERewardFunction(scorer, reward="similarity")(completions=completions, target_id=[1, 1])
    assert sim == pytest.approx(stats.target_similarity.tolist(), abs=1e-6)
    margin = GRAPERewardFunction(scorer, reward="margin")(completions=completions, target_id=[1, 1])
    assert margin == pytest.approx((stats.target_similarity - stats.topk_nontarget_similarity).tolist(), abs=1e-6)
    assert margin[0] > 0 > margin[1]


@pytest.mark.parametrize("variant", sorted(REWARD_VARIANTS))
def test_empty_completion_gets_the_lowest_reward_not_an_error(scorer, variant):
    reward = GRAPERewardFunction(scorer, reward=variant)
    values = reward(completions=["", "   \n", "two men play chess"], target_id=[1, 1, 1])
    assert values[:2] == [LOWEST_REWARD[variant]] * 2
    assert values[2] > LOWEST_REWARD[variant]
    all_empty = reward(completions=["", ""], target_id=[0, 1])
    assert all_empty == [LOWEST_REWARD[variant]] * 2


def test_conversational_completions_and_multi_target(scorer):
    reward = GRAPERewardFunction(scorer, reward="rank")
    completions = [[{"role": "assistant", "content": "a dog on the grass"}], [{"role": "assistant", "content": ""}]]
    assert reward(completions=completions, target_id=[[2, 0], 0]) == [1.0, 0.0]


def test_metrics_are_logged_through_log_metric(scorer):
    logged = {}
    reward = GRAPERewardFunction(scorer, reward="rank")
    reward(
        completions=["two men play chess", "a dog", ""],
        target_id=[1, 1, 1],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    expected_keys = {
        f"grape/{k}"
        for k in (
            "mean_rank",
            "R@1",
            "R@5",
            "R@10",
            "MRR",
            "nDCG@10",
            "target_similarity",
            "nontarget_similarity",
            "empty_fraction",
            "degenerate_fraction",
        )
    }
    assert set(logged) == expected_keys
    # The empty completion counts as a miss at the worst rank.
    assert logged["grape/R@1"] == pytest.approx(1 / 3) and logged["grape/empty_fraction"] == pytest.approx(1 / 3)
    assert logged["grape/mean_rank"] == pytest.approx((1 + scorer.ranks(["a dog"], [1]).item() + 4) / 3)
    assert logged["grape/degenerate_fraction"] == 0
    assert logged == reward.last_metrics


def test_relative_reward_subtracts_the_original(scorer):
    base = GRAPERewardFunction(scorer, reward="margin")
    relative = GRAPERewardFunction(scorer, reward="margin", relative=True)
    completions = ["men playing chess", "a car in the snow"]
    originals = ["Zwei Männer spielen Schach"] * 2
    absolute = base(completions=completions, target_id=[1, 1])
    original = base(completions=originals[:1], target_id=[1])[0]
    got = relative(completions=completions, target_id=[1, 1], query=originals)
    assert got == pytest.approx([a - original for a in absolute], abs=1e-6)
    assert relative.__name__ == "grape_margin_relative"
    with pytest.raises(ValueError, match="original query in column 'query'"):
        relative(completions=completions, target_id=[1, 1])


def test_never_nan(scorer):
    def nan_variant(stats):
        return torch.full_like(stats.target_similarity, float("nan"))

    reward = GRAPERewardFunction(scorer, reward=nan_variant, lowest_reward=-3.0)
    assert reward(completions=["a", "b"], target_id=[0, 1]) == [-3.0, -3.0]


def test_bad_inputs(scorer):
    reward = GRAPERewardFunction(scorer)
    with pytest.raises(ValueError, match="no target column 'target_id'.*'image_id'"):
        reward(completions=["a"], image_id=[0])
    with pytest.raises(ValueError, match="target_id 9 is outside the corpus \\(4 items\\)"):
        reward(completions=["a"], target_id=[9])
    with pytest.raises(
        ValueError, match="Unknown reward 'recall'.*'margin', 'rank', 'reciprocal_rank', 'shaped_rank', 'similarity'"
    ):
        GRAPERewardFunction(scorer, reward="recall")
    with pytest.raises(ValueError, match="Cannot import the reward function 'nowhere.fn'"):
        GRAPERewardFunction(scorer, reward="nowhere.fn")


def test_registry_and_dotted_path(scorer):
    for name in ("rank", "similarity", "margin", "tests.test_rewards.custom_reward"):
        assert callable(resolve_reward_variant(name)[1])
    funcs = get_reward_funcs(scorer, ["rank", "tests.test_rewards:custom_reward"])
    assert [f.__name__ for f in funcs] == ["grape_rank", "grape_custom_reward"]
    assert funcs[1](completions=["a dog on grass"], target_id=[0]) == [-1.0]


def test_picklable(scorer):
    reward = GRAPERewardFunction(scorer, reward="rank")
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "grape_rank"
    assert clone(completions=["men play chess"], target_id=[1]) == reward(
        completions=["men play chess"], target_id=[1]
    )


# ---------------------------------------------------------------- wrong results that used to pass silently
def test_target_count_must_match_the_completions(scorer):
    reward = GRAPERewardFunction(scorer)
    with pytest.raises(ValueError, match="3 values in column 'target_id' for 2 completions"):
        reward(completions=["a dog", "a car"], target_id=[0, 2, 1])
    with pytest.raises(ValueError, match="1 values in column 'target_id' for 2 completions"):
        reward(completions=["a dog", ""], target_id=[0])
    relative = GRAPERewardFunction(scorer, relative=True)
    with pytest.raises(ValueError, match="1 values in column 'query' for 2 completions"):
        relative(completions=["a dog", "a car"], target_id=[0, 2], query=["Hund"])


def test_string_target_ids_are_refused_not_split_into_digits(scorer):
    reward = GRAPERewardFunction(scorer)
    with pytest.raises(ValueError, match="the string '12'.*cast_column"):
        reward(completions=["a dog"], target_id=["12"])
    with pytest.raises(ValueError, match="the string '1'"):
        reward(completions=["a dog"], target_id=["1"])


@pytest.mark.parametrize("variant", sorted(REWARD_VARIANTS))
def test_zero_width_completion_is_empty(scorer, variant):
    reward = GRAPERewardFunction(scorer, reward=variant)
    values = reward(completions=["\u200b\u200c\u200d", "\ufeff \u2060", "a dog"], target_id=[0, 0, 0])
    assert values[:2] == [LOWEST_REWARD[variant]] * 2 and values[2] > LOWEST_REWARD[variant]
    assert reward.last_metrics["grape/empty_fraction"] == pytest.approx(2 / 3)


class BrokenOnWord(Retriever):
    """A user's retriever that embeds any text containing 'void' to NaN (or zero): MiniLM otherwise."""

    def __init__(self, inner, value):
        super().__init__("test:broken-on-void", device="cpu")
        self.inner, self.value = inner, value

    def _encode_text(self, texts):
        out = self.inner._encode_text(texts).clone()
        out[[i for i, t in enumerate(texts) if "void" in t]] = self.value
        return out


@pytest.mark.parametrize("variant", sorted(REWARD_VARIANTS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_degenerate_query_embedding_earns_the_lowest_reward_and_is_counted(minilm, variant, value):
    scorer = RankScorer(BrokenOnWord(minilm, value), CORPUS, show_progress_bar=False)
    reward = GRAPERewardFunction(scorer, reward=variant)
    values = reward(completions=["the void", "two men play chess", "void"], target_id=[1, 1, 1])
    assert values[0] == values[2] == LOWEST_REWARD[variant] < values[1]
    metrics = reward.last_metrics
    assert metrics["grape/degenerate_fraction"] == pytest.approx(2 / 3)
    assert metrics["grape/mean_rank"] == pytest.approx((4 + 1 + 4) / 3)
    assert math.isfinite(metrics["grape/target_similarity"]) and math.isfinite(metrics["grape/nontarget_similarity"])
    relative = GRAPERewardFunction(scorer, reward=variant, relative=True)
    got = relative(completions=["two men play chess"] * 2, target_id=[1, 1], query=["void", "Männer"])
    assert got[0] == pytest.approx(values[1] - LOWEST_REWARD[variant])


def test_same_metric_keys_when_every_completion_is_empty(scorer):
    """Under several processes TRL gathers the logged keys in order: a rank with only empty completions must log
    the same keys as the others."""
    reward = GRAPERewardFunction(scorer)
    reward(completions=["a dog"], target_id=[0])
    keys = set(reward.last_metrics)
    reward(completions=["", "\u200b"], target_id=[0, 1])
    assert set(reward.last_metrics) == keys
    assert reward.last_metrics["grape/mean_rank"] == 4 and reward.last_metrics["grape/R@10"] == 0


def mean_rank_reward(stats):
    """A user's variant that returns one number for the whole batch (a mistake)."""
    return -stats.ranks.float().mean()


def first_two_reward(stats):
    return [1.0, 0.5]


@pytest.mark.parametrize("relative", [False, True])
def test_a_variant_that_returns_one_number_is_refused_not_broadcast(scorer, relative):
    completions = ["two men play chess", "a dog", "a red car"]
    kwargs = {"target_id": [1, 1, 1], "query": ["Schach"] * 3}
    with pytest.raises(
        ValueError, match=r"'mean_rank_reward' returned a single number \(-\d+\.?\d*\) for 3 completions"
    ):
        GRAPERewardFunction(scorer, reward=mean_rank_reward, relative=relative)(completions=completions, **kwargs)
    with pytest.raises(ValueError, match=r"'first_two_reward' returned 2 values for 3 completions"):
        GRAPERewardFunction(scorer, reward=first_two_reward)(completions=completions, **kwargs)


def test_duplicate_target_ids_do_not_skew_the_nontarget_similarity(scorer):
    once = scorer.rank_stats(["men playing chess"], [[1]])
    repeated = scorer.rank_stats(["men playing chess"], [[1, 1, 1, 1]])
    torch.testing.assert_close(repeated.nontarget_similarity, once.nontarget_similarity)
    assert repeated.ranks.tolist() == once.ranks.tolist()


def test_a_multi_message_completion_keeps_its_words_apart(scorer):
    from grape_hf.training.rewards import completion_text

    messages = [{"role": "assistant", "content": "two men"}, {"role": "assistant", "content": "play chess"}]
    assert completion_text(messages) == "two men\nplay chess"
    parts = [
        {"role": "assistant", "content": [{"type": "text", "text": "two men"}, {"type": "text", "text": "chess"}]}
    ]
    assert completion_text(parts) == "two men\nchess"
    reward = GRAPERewardFunction(scorer, reward="similarity")
    assert reward(completions=[messages], target_id=[1]) == reward(completions=["two men\nplay chess"], target_id=[1])
