"""Loading GRAPE data: queries with the id of their right corpus item, and the corpus itself.

Sources, one module each:

- a Multi30k folder (the layout of `../shared/data/multi30k`: `task1/`, `task2/` of gzip caption files), where a
  caption in one language is the query and the same image's caption in another language is the target;
- any `datasets` source (a local folder saved with `save_to_disk`, data files, or a Hub dataset id) holding a
  query split with `query` and `target_id` columns and a corpus split with a `text` (or `image`) column (`grape`);
- the GRAPE paper's benchmarks as published on the Hub or by their authors (`paper`): XM3600 (multilingual), CIRR
  (composed), DOCCI (long descriptions), Flickr30k-CN and CVLUE (Chinese).

`base` holds what a task is ([`GRAPEData`]); `multi30k` the Multi30k folder.
"""

from .base import GRAPEData, check_count
from .grape import load_grape_dataset
from .multi30k import MULTI30K_SPLITS, is_multi30k_dir, load_multi30k
from .paper import (
    PAPER_DATASETS,
    load_cirr,
    load_cvlue,
    load_docci,
    load_flickr30k_cn,
    load_paper_split,
    load_xm3600,
)

__all__ = [
    "MULTI30K_SPLITS",
    "PAPER_DATASETS",
    "GRAPEData",
    "check_count",
    "is_multi30k_dir",
    "load_cirr",
    "load_cvlue",
    "load_docci",
    "load_flickr30k_cn",
    "load_grape_dataset",
    "load_multi30k",
    "load_paper_split",
    "load_xm3600",
]
