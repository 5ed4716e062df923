"""How much copying the reference caption earns on composed queries, against how many other edits of the reference
the corpus holds (`composed_negatives`): the retriever alone, no rewriter.

    python benchmarks/shapes_composed_negatives.py

For k = 1, 3, 5, 7 it builds seed 1's composed set over 1,000 images (1000 // (3 + k) queries) and ranks the target
with the reference caption as the query (a rewriter that ignores the edit) and with the target's own caption (the
ceiling). Writes benchmarks/results/shapes_composed_negatives.json.
"""

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from grape_hf import RankScorer, load_retriever  # noqa: E402
from grape_hf.metrics import METRICS, retrieval_metrics  # noqa: E402
from grape_hf.shapes import build_shift  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "shapes_composed_negatives.json"


def main() -> None:
    start = time.time()
    retriever = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
    results = {}
    for k in (1, 3, 5, 7):
        rows, scenes = build_shift("composed", num_images=1000, seed=1, composed_negatives=k)
        scorer = RankScorer(retriever, [scene.render() for scene in scenes], show_progress_bar=False)
        targets = [row["target_id"] for row in rows]
        results[str(k)] = {"queries": len(rows)}
        for name, texts in (
            ("reference_caption", [row["reference"] for row in rows]),
            ("oracle", [scenes[i].caption for i in targets]),
        ):
            metrics = retrieval_metrics(scorer.ranks(texts, targets))
            results[str(k)][name] = {m: round(metrics[m], 3) for m in METRICS}
        print(k, json.dumps(results[str(k)]), flush=True)
    results["_meta"] = {
        "command": "python benchmarks/shapes_composed_negatives.py",
        "seconds": round(time.time() - start),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
