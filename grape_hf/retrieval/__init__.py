"""The frozen retriever and its view of the corpus: what the reward ranks with.

`retrievers` (`load_retriever`: CLIP, SigLIP, sentence-transformers behind one `Retriever`; the interface in
`base`, the backends in `backends`, what names a retriever in `identity`), `cache` (corpus
embeddings on disk), `scorer` (`RankScorer`: exact ranks among the whole corpus), `negatives` (sampled-negatives
ranks), `index` (FAISS for large corpora) and `search` (`GRAPERetriever`: rewrite, then retrieve).
"""
