"""The rewriter: a query in, rewrites out.

`prompts` (the templates per shift, data in `prompts.json`), `folder` (the rewriter folder: its format, loader,
prompt rendering and generation, shipped as remote code with `pipeline`), `pipeline` (`pipeline("grape-rewrite")`)
and `rewriter` (`QueryRewriter`, the shipped rewriters).
"""
