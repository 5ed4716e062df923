"""The rewriter: a query in, rewrites out.

`prompts` (the templates per shift, data in `prompts.json`), `folder` (the rewriter folder: its format and loader),
`saving` (writing one, with the remote code it ships), `prompting` (rendering a prompt, cleaning a rewrite),
`generation` (the fast generation path), `devices` (the device's fast dtype), `pipeline` (`pipeline("grape-rewrite")`)
and `rewriter` (`QueryRewriter`, the shipped rewriters). `folder`, `saving`, `prompting`, `generation`, `devices` and
`pipeline` import only each other (and torch, transformers): a saved folder ships them as its remote code.
"""
