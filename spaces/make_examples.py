"""Choose the Space's one-click examples: held-out queries whose greedy rewrite improves the target's rank.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python spaces/make_examples.py   # writes spaces/examples.json (~10 min on 2 CPUs)

For each shift it rewrites a seeded sample of held-out queries (shapes world seed 1; Multi30k val) with the rewriter
the Space serves and keeps those whose target rank improved most. The browser test clicks the first example of each
track and checks the rank improves, so the choice is deterministic (greedy decoding, one rewrite).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from grape_space import SpaceEngine, pick_examples  # noqa: E402

CANDIDATES = {"multilingual": 48, "long_form": 24, "composed": 40, "captions": 60}
KEEP = {"multilingual": 4, "long_form": 2, "composed": 3, "captions": 4}


def main() -> None:
    engine = SpaceEngine()
    examples = {}
    for shift, candidates in CANDIDATES.items():
        start = time.time()
        picked = pick_examples(engine, shift, KEEP[shift], candidates)
        examples[shift] = [
            {
                key: row[key]
                for key in ("query", "target_id", "reference_id", "language", "rewrite", "rank_before", "rank_after")
                if key in row
            }  # fmt: skip
            for row in picked
        ]
        print(f"{shift}: {candidates} candidates in {time.time() - start:.0f} s", flush=True)
        for row in examples[shift]:
            print(f"  {row['rank_before']} -> {row['rank_after']}: {row['query'][:70]!r} -> {row['rewrite'][:70]!r}")
    path = Path(__file__).with_name("examples.json")
    path.write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
