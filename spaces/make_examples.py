"""Choose the Space's one-click examples: held-out queries whose greedy rewrite improves the target's rank.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python spaces/make_examples.py   # writes spaces/examples.json (~10 min on 2 CPUs)
    PYTHONPATH=. HF_HUB_OFFLINE=1 python spaces/make_examples.py captions   # only that track (a new rewriter)

For each shift it rewrites a seeded sample of held-out queries (shapes world seed 1; Multi30k val) with the rewriter
the Space serves and keeps those whose target rank improved most. The browser test clicks the first example of each
track and checks the rank improves, so the choice is deterministic (greedy decoding, one rewrite).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from grape_space import SpaceEngine  # noqa: E402

CANDIDATES = {"multilingual": 48, "long_form": 24, "composed": 40, "captions": 60}
KEEP = {"multilingual": 4, "long_form": 2, "composed": 3, "captions": 4}


def pick_examples(engine: SpaceEngine, shift: str, count: int, candidates: int, seed: int = 0) -> list[dict]:
    """Held-out queries whose target rank the greedy rewrite improves most (ties: the better final rank); slow (one
    rewrite per candidate)."""
    rows = engine.caption_rows if shift == "captions" else engine.rows[shift]
    if shift == "multilingual":
        rows_by_language: dict[str, list] = {}
        for row in rows:
            rows_by_language.setdefault(row["language"], []).append(row)
        rng = random.Random(seed)
        pool = [row for lang_rows in rows_by_language.values() for row in rng.sample(lang_rows, candidates // 4)]
    else:
        pool = random.Random(seed).sample(rows, min(candidates, len(rows)))
    scored = []
    for row in pool:
        reference = engine.composed.scenes[row["reference_id"]].render() if shift == "composed" else None
        track = "captions" if shift == "captions" else "images"
        result = engine.search(
            track, row["query"], reference=reference, k=5, shift=None if shift == "composed" else shift
        )
        before, after = result["target_rank"]["original"], result["target_rank"]["rewritten"]
        scored.append({**row, "rewrite": result["rewrites"][0], "rank_before": before, "rank_after": after})
    scored.sort(key=lambda r: (-(r["rank_before"] - r["rank_after"]) / r["rank_before"], r["rank_after"]))
    if shift == "multilingual":  # the best of each language first
        firsts = {}
        for row in scored:
            firsts.setdefault(row["language"], row)
        scored = list(firsts.values()) + [row for row in scored if row not in firsts.values()]
    return [row for row in scored if row["rank_after"] < row["rank_before"]][:count]


def main(shifts: list[str]) -> None:
    unknown = sorted(set(shifts) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"Unknown track(s) {unknown}; choose from {sorted(CANDIDATES)}.")
    path = Path(__file__).with_name("examples.json")
    # Tracks not asked for keep their examples.
    examples = json.loads(path.read_text(encoding="utf-8")) if shifts and path.is_file() else {}
    engine = SpaceEngine()
    for shift, candidates in CANDIDATES.items():
        if shifts and shift not in shifts:
            continue
        start = time.time()
        picked = pick_examples(engine, shift, KEEP[shift], candidates)
        examples[shift] = [
            {
                key: row[key]
                for key in ("query", "target_id", "reference_id", "language", "rewrite", "rank_before", "rank_after")
                if key in row
            }
            for row in picked
        ]
        print(f"{shift}: {candidates} candidates in {time.time() - start:.0f} s", flush=True)
        for row in examples[shift]:
            print(f"  {row['rank_before']} -> {row['rank_after']}: {row['query'][:70]!r} -> {row['rewrite'][:70]!r}")
    examples = {shift: examples[shift] for shift in CANDIDATES if shift in examples}
    path.write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
