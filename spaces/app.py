"""The grape_hf Space: retrieval before and after GRAPE's query rewriting, on images and on captions.

    make space                                       # from the repo: set up .venv, then this file on port 7860
    GRADIO_SERVER_PORT=7861 .venv/bin/python spaces/app.py

The search is also an API endpoint (`api_name="search"`); see spaces/README.md for calling it with gradio_client.
Everything loads once at startup; `spaces/grape_space.py` holds the logic and the environment variables.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradio as gr  # noqa: E402
from grape_space import MAX_K, MAX_REWRITES, SpaceEngine, SpaceInputError  # noqa: E402
from PIL import UnidentifiedImageError  # noqa: E402

logger = logging.getLogger("grape_space.app")
EXAMPLES_FILE = Path(os.environ.get("GRAPE_SPACE_EXAMPLES", Path(__file__).with_name("examples.json")))
TRACK_CHOICES = [("Images (shapes world, grape-shapes-clip)", "images"), ("Captions (Multi30k, MiniLM)", "captions")]
SHIFT_TITLES = {
    "multilingual": "Images · German, French, Spanish, Chinese",
    "long_form": "Images · a long description",
    "composed": "Images · a reference image plus an edit",
    "captions": "Captions · German Multi30k descriptions",
}
CSS = """
.grape-cut { background: #fde2e2; color: #8a8a8a; text-decoration: line-through; }
.grape-scissors { color: #c0392b; font-weight: bold; }
.grape-target td { background: #dff5e3; font-weight: 600; }
.grape-rank { font-size: 1.15em; }
#grape-before img, #grape-after img { image-rendering: pixelated; }
"""


def explain_non_images(image: gr.Image) -> gr.Image:
    """Make an upload that is no image fail with a message (the stock `gr.Image` fails inside PIL, unexplained).

    Wraps the instance's `preprocess` rather than subclassing: gradio writes a `.pyi` stub beside the file of every
    component subclass.
    """
    stock = image.preprocess

    def preprocess(payload):
        try:
            return stock(payload)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"The reference {name!r} is not an image ({type(err).__name__}); upload a PNG or JPEG."
            ) from None

    image.preprocess = preprocess
    return image


def build_demo(engine: SpaceEngine) -> gr.Blocks:
    """The page: inputs, the rewrite and the target's rank, the two ranked lists side by side, and examples."""

    def search(track, query, reference, num_rewrites, k):
        """Rewrite the query with GRAPE, then rank the corpus for the original query and for the rewrite.

        Args:
            track: "images" (the shapes world, grape-shapes-clip) or "captions" (Multi30k val, all-MiniLM-L6-v2).
            query: The query; with a reference image, the edit to apply to it.
            reference: A reference image (images track, optional).
            num_rewrites: 1 rewrites greedily; more are sampled and fused with the query (reciprocal-rank fusion).
            k: Items per ranked list.

        Returns:
            The rewrite(s), the top-k items before and after, the target's rank before and after (when known).
        """
        try:
            result = engine.search(track, query or "", reference=reference, num_rewrites=num_rewrites, k=k)
        except SpaceInputError as err:
            raise gr.Error(str(err)) from None
        except Exception as err:  # noqa: BLE001 - the page gets a message, the log the traceback
            logger.exception("search failed")
            raise gr.Error(f"The search failed ({type(err).__name__}: {err}).") from None
        for message in result["warnings"]:
            gr.Warning(message)
        return result

    with gr.Blocks(title="GRAPE: rewrite the query, not the retriever") as demo:
        gr.Markdown(
            "# GRAPE: rewrite the query, not the retriever\n"
            "A frozen retriever fails on queries it was never trained for: another language, a long chatty "
            "description, a reference image plus an edit. A small LLM (Gemma 3 270M; SmolLM2-135M for the "
            "composed edits) trained with GRPO on the "
            "retriever's **ranking** ([GRAPE, arXiv 2509.23370](https://arxiv.org/abs/2509.23370)) rewrites the "
            "query. Below: what the retriever returns for the query as written and as rewritten (the target, when "
            "the query is a held-out one, framed in green and starred). Built with grape_hf's "
            '`pipeline("grape-rewrite")`, offline on its shipped rewriters.'
        )
        with gr.Row():
            track = gr.Radio(TRACK_CHOICES, value="images", label="Track", elem_id="grape-track")
        with gr.Row():
            with gr.Column(scale=3):
                query = gr.Textbox(
                    label="Query (with a reference image: the edit)",
                    lines=3,
                    placeholder=(
                        "ein großes rotes Dreieck oben · un cercle bleu à gauche · Zwei Hunde spielen im Schnee."
                    ),
                    elem_id="grape-query",
                )
                with gr.Row():
                    num_rewrites = gr.Slider(
                        1, MAX_REWRITES, value=1, step=1, label="Rewrites (more than 1: sampled, fused by RRF)"
                    )
                    k = gr.Slider(1, MAX_K, value=8, step=1, label="Top-k")
                button = gr.Button("Search", variant="primary", elem_id="grape-search")
            reference = gr.Image(
                label="Reference image (images track, optional)",
                type="pil",
                sources=["upload", "clipboard"],
                height=200,
                elem_id="grape-reference",
            )
            explain_non_images(reference)
        summary = gr.HTML(elem_id="grape-summary")
        view = gr.HTML(elem_id="grape-view")
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="grape-before-panel"):
                before_title = gr.Markdown("### Query as written")
                before_gallery = gr.Gallery(columns=4, height=330, elem_id="grape-before", show_label=False)
                before_table = gr.HTML(elem_id="grape-before-table")
            with gr.Column(elem_id="grape-after-panel"):
                after_title = gr.Markdown("### Rewritten by GRAPE")
                after_gallery = gr.Gallery(columns=4, height=330, elem_id="grape-after", show_label=False)
                after_table = gr.HTML(elem_id="grape-after-table")
        with gr.Accordion("API result (JSON)", open=False):
            result_json = gr.JSON(label="result", elem_id="grape-json")

        inputs = [track, query, reference, num_rewrites, k]
        button.click(search, inputs, result_json, api_name="search", concurrency_id="models")
        query.submit(search, inputs, result_json, api_visibility="private", concurrency_id="models")
        outputs = [summary, view, before_title, after_title, before_gallery, after_gallery, before_table, after_table]
        result_json.change(lambda result: render(engine, result), result_json, outputs, api_visibility="private")

        gr.Markdown("## Examples (held out; one click runs them)")
        for shift, rows in load_examples(engine).items():
            gr.Examples(
                rows,
                inputs,
                result_json,
                fn=search,
                run_on_click=True,
                cache_examples=False,
                label=SHIFT_TITLES[shift],
                example_labels=[_example_label(row) for row in rows],
                api_visibility="private",
                elem_id=f"grape-examples-{shift}",
            )
    return demo


def load_examples(engine: SpaceEngine) -> dict[str, list[list]]:
    """The held-out examples of `spaces/examples.json` as input rows; composed ones get their reference image."""
    chosen = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))
    folder = Path(tempfile.gettempdir()) / "grape_space_examples"
    folder.mkdir(exist_ok=True)
    rows = {}
    for shift, examples in chosen.items():
        if shift == "captions" and engine.captions is None:
            continue
        rows[shift] = []
        for example in examples:
            reference = None
            if shift == "composed":
                reference = str(folder / f"reference-{example['reference_id']}.png")
                engine.reference_image(example["reference_id"], display=False).save(reference)
            track = "captions" if shift == "captions" else "images"
            rows[shift].append([track, example["query"], reference, 1, 8])
    return rows


def _example_label(row: list) -> str:
    text = row[1][:90] + ("…" if len(row[1]) > 90 else "")
    return f"[reference image] + “{text}”" if row[2] else text


# --- rendering the result ---------------------------------------------------------------------------------------


def _rank_text(rank) -> str:
    return "not found" if rank is None else f"#{rank}"


def render(engine: SpaceEngine, result: dict | None):
    if not result:
        return [gr.update()] * 8
    images = result["track"] == "images"
    esc = html.escape
    rows = []
    if result["reference"]:
        ref = result["reference"]
        rows.append(f"<p><b>Reference read as:</b> “{esc(ref['caption'])}” <i>({esc(ref['note'])})</i></p>")
    label = "Rewrites (fused with the query by reciprocal-rank fusion)" if result["fused"] else "Rewrite"
    rewrites = "".join(f"<li class='grape-rewrite'>{esc(r) or '<i>(empty)</i>'}</li>" for r in result["rewrites"])
    rows.append(f"<p><b>{label}</b> by <code>{esc(result['rewriter'])}</code>:</p><ul>{rewrites}</ul>")
    if result["target_rank"]:
        before, after = result["target_rank"]["original"], result["target_rank"]["rewritten"]
        rows.append(
            f"<p class='grape-rank' data-rank-before='{before or ''}' data-rank-after='{after or ''}'>"
            f"<b>Target</b> “{esc(result['target']['caption'])}”: rank <b>{_rank_text(before)}</b> → "
            f"<b>{_rank_text(after)}</b> of {result['corpus_size']:,}</p>"
        )
    else:
        rows.append(
            "<p class='grape-rank'>This query is not one of the held-out queries, so its target is unknown.</p>"
        )
    rows.append(
        f"<p><small>{esc(result['shift'])} · retriever <code>{esc(result['retriever'])}</code> · corpus "
        f"{esc(result['corpus'])} · {result['seconds']:.1f} s</small></p>"
    )
    summary = f"<div class='grape-result' data-shift='{esc(result['shift'])}'>{''.join(rows)}</div>"

    view_rows = []
    for name, seen in (("query", result["view"]["query"]), ("rewrite", result["view"]["rewrite"])):
        if seen["cut"]:
            view_rows.append(
                f"<p><b>What the retriever reads of the {name}</b> ({seen['tokens']} tokens; it reads "
                f"{seen['context']}):<br>{esc(seen['seen'])}<span class='grape-scissors'> ✂ cut here </span>"
                f"<span class='grape-cut'>{esc(seen['unseen'])}</span></p>"
            )
    view = "".join(view_rows)

    def gallery(items):
        return [
            (
                engine.display_image(result, item),
                f"{'★ ' if item['is_target'] else ''}#{item['rank']} · {item['score']:.3f}",
            )
            for item in items
        ]

    def table(items):
        body = "".join(
            f"<tr class='{'grape-target' if item['is_target'] else ''}'><td>#{item['rank']}</td>"
            f"<td>{item['score']:.3f}</td><td>{'★ ' if item['is_target'] else ''}{esc(item['text'])}</td></tr>"
            for item in items
        )
        return f"<table><tr><th>rank</th><th>score</th><th>description</th></tr>{body}</table>"

    before_title = f"### Query as written · target {_rank_text((result['target_rank'] or {}).get('original'))}"
    after_name = "Fused rewrites" if result["fused"] else "Rewritten by GRAPE"
    after_title = f"### {after_name} · target {_rank_text((result['target_rank'] or {}).get('rewritten'))}"
    if not result["target_rank"]:
        before_title, after_title = "### Query as written", f"### {after_name}"
    return [
        summary,
        view,
        before_title,
        after_title,
        gr.update(value=gallery(result["original"]) if images else None, visible=images),
        gr.update(value=gallery(result["rewritten"]) if images else None, visible=images),
        gr.update(value=table(result["original"]) if not images else "", visible=not images),
        gr.update(value=table(result["rewritten"]) if not images else "", visible=not images),
    ]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.time()
    engine = SpaceEngine()
    demo = build_demo(engine)
    logger.info("models and corpora loaded in %.1f s: %s", time.time() - start, engine.timings)
    # One search at a time (the models share two CPU cores); up to 64 wait in the queue.
    demo.queue(max_size=64, default_concurrency_limit=1)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=CSS,
        show_error=False,
        footer_links=["api"],
    )


if __name__ == "__main__":
    main()
