"""Saving and publishing trained rewriters: the folder layout, the model card, the upload.

A published rewriter is the folder [`~grape_hf.rewriting.saving.save_rewriter_folder`] writes (model or `adapter/`,
tokenizer, `grape_rewriter.json`, the remote-code modules, `grape_prompts.json`) plus a `README.md` model
card rendered from `templates/model_card.md`. [`build_upload_folder`] builds exactly what [`push_rewriter`] uploads,
without network, from a folder saved here or a plain training output (a full model or a PEFT adapter).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .metrics import CARD_NAMES
from .rewriting.folder import (
    ADAPTER_SUBFOLDER,
    POINTER_MODEL_TYPE,
    REWRITER_CONFIG_NAME,
    RewriterConfig,
)
from .rewriting.prompting import render_completion
from .rewriting.prompts import PROMPTS_FILE
from .rewriting.saving import add_pipeline_files, save_rewriter_folder

TEMPLATE_PATH = Path(__file__).with_name("templates") / "model_card.md"
PAPER_URL = "https://arxiv.org/abs/2509.23370"
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "*.model",
)
_EXAMPLE_QUERIES = {
    "multilingual": "Ein Hund rennt über eine Wiese.",
    "long_form": "A long description of a photo in which, on the left, a small brown dog runs across a green meadow.",
    "composed": "make the dog black",
}


def _as_dict(rewriter_config: RewriterConfig | dict | None) -> dict | None:
    if rewriter_config is None or isinstance(rewriter_config, dict):
        return rewriter_config
    if is_dataclass(rewriter_config):
        return asdict(rewriter_config)
    raise TypeError(f"rewriter_config must be a RewriterConfig or a dict, got {type(rewriter_config).__name__}.")


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(name).exists() and not name.startswith((".", "/", "~")) and name.count("/") <= 1


def save_rewriter(model, tokenizer, folder: str | Path, rewriter_config: RewriterConfig | dict | None = None) -> Path:
    """Save a trained rewriter so that `pipeline("grape-rewrite")`, remote code and [`push_rewriter`] can use it.

    Writes the model (a [`~peft.PeftModel`] goes to `adapter/`), the tokenizer, `grape_rewriter.json`, the pipeline
    module that transformers runs as remote code, the built-in prompts and a `README.md` model card.

    Args:
        model: The rewriter LM or PEFT model.
        tokenizer: Its tokenizer.
        folder (`str` or `Path`): Where to write.
        rewriter_config ([`~grape_hf.rewriting.folder.RewriterConfig`] or `dict`, *optional*): Prompt, base model,
            retriever, training settings and evaluation numbers.

    Returns:
        `Path`: The folder.

    Example:
    ```python
    >>> from grape_hf.hub import save_rewriter
    >>> save_rewriter(model, tokenizer, "outputs/rewriter", rewriter_config)  # doctest: +SKIP
    PosixPath('outputs/rewriter')
    ```
    """
    config = _as_dict(rewriter_config)
    prompts = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    folder = save_rewriter_folder(model, tokenizer, folder, rewriter_config=config, prompts=prompts)
    if config is not None:
        is_adapter = (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file()
        build_model_card(config, model_id=None, is_adapter=is_adapter).save(folder / "README.md")
    return folder


def build_model_card(
    rewriter_config: RewriterConfig | dict, model_id: str | None = None, is_adapter: bool = False, base_model=None
):
    """Render the model card of a rewriter from `templates/model_card.md`.

    The metadata holds the base model, tags and a `model-index` with the retrieval metrics before and after rewriting
    (`R@1`, `R@5`, `R@10`, `MRR`, `nDCG@10` when present in `rewriter_config.evaluation`).

    Args:
        rewriter_config ([`~grape_hf.rewriting.folder.RewriterConfig`] or `dict`): What `grape_rewriter.json` holds.
        model_id (`str`, *optional*): The Hub repo id, used in the usage snippet and as the model-index name.
        is_adapter (`bool`, *optional*, defaults to `False`): Whether the weights are a PEFT adapter.
        base_model (`str`, *optional*): The base model's Hub id; defaults to `rewriter_config.base_model`.

    Returns:
        [`~huggingface_hub.ModelCard`]

    Example:
    ```python
    >>> from grape_hf.hub import build_model_card
    >>> evaluation = {"before": {"R@1": 0.2}, "after": {"R@1": 0.3}, "split": "test", "num_queries": 1000}
    >>> card = build_model_card({"prompt": {"user": "Translate: {query}"}, "evaluation": evaluation})
    >>> [(r.metric_type, r.metric_value) for r in card.data.eval_results]
    [('recall_at_1_before_rewriting', 0.2), ('recall_at_1', 0.3)]
    ```
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = _as_dict(rewriter_config)
    if not isinstance(config.get("prompt"), dict) or "user" not in config["prompt"]:
        raise ValueError(f"rewriter_config needs a prompt with a 'user' turn; got {config.get('prompt')!r}.")
    base_model = base_model or config.get("base_model")
    hub_base = base_model if _is_hub_id(base_model) else None
    evaluation = config.get("evaluation") or {}
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    zero_shot = evaluation.get("zero_shot") or {}  # the base model prompted the same way, before training
    dataset = config.get("dataset") or evaluation.get("dataset") or "custom"
    name = model_id or "grape-rewriter"
    eval_results, rows = [], []
    for key, metric_type in CARD_NAMES.items():
        if key not in before and key not in after:
            continue
        rows.append((key, _fmt(before.get(key)), _fmt(zero_shot.get(key)), _fmt(after.get(key))))
        for stage, values, suffix in (("before", before, "_before_rewriting"), ("after", after, "")):
            if key in values:
                eval_results.append(
                    EvalResult(
                        task_type="text-retrieval",
                        task_name=f"Retrieval with {config.get('retriever') or 'a frozen retriever'}",
                        dataset_type=str(dataset),
                        dataset_name=str(dataset),
                        dataset_split=evaluation.get("split"),
                        metric_type=metric_type + suffix,
                        metric_name=f"{key} ({stage} rewriting)",
                        metric_value=float(values[key]),
                    )
                )
    # Other policies evaluated on the same queries (earlier training stages, a previous version), in recorded order.
    stage_rows = [
        (stage, [_fmt(values.get(key)) for key in CARD_NAMES])
        for stage, values in evaluation.items()
        if stage not in ("before", "zero_shot", "after") and isinstance(values, dict) and set(values) & set(CARD_NAMES)
    ]
    tags = ["grape", "query-rewriting", "retrieval", "trl", "grpo"] + (["peft", "lora"] if is_adapter else [])
    card_data = ModelCardData(
        model_name=name,
        base_model=hub_base,
        base_model_relation=("adapter" if is_adapter else "finetune") if hub_base else None,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset] if _is_hub_id(dataset) and "/" in dataset else None,
        eval_results=eval_results or None,
    )
    prompt = config["prompt"]
    shift = config.get("shift") or prompt.get("shift")
    completion_prompt = None
    if prompt.get("format") == "completion":  # a base model: show the whole text it continues
        reference = "{reference}" if "{reference}" in prompt["user"] else None
        completion_prompt = render_completion(prompt, "{query}", reference)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=name,
        model_id=model_id or "path/to/this/rewriter",
        base_model=base_model,
        base_model_link=f"https://huggingface.co/{hub_base}" if hub_base else None,
        is_adapter=is_adapter,
        retriever=config.get("retriever"),
        dataset=config.get("dataset"),
        corpus=config.get("corpus"),
        shift=shift,
        reward=config.get("reward"),
        prompt=prompt,
        completion_prompt=completion_prompt,
        stages=(config.get("training") or {}).get("stages"),
        training=config.get("training") or {},
        evaluation=evaluation,
        evaluation_rows=rows,
        stage_rows=stage_rows,
        metric_names=list(CARD_NAMES),
        has_zero_shot=bool(zero_shot),
        example_query=_literal(_EXAMPLE_QUERIES.get(shift or "", _EXAMPLE_QUERIES["multilingual"])),
        example_reference=_literal("a brown dog runs on the grass") if "{reference}" in prompt["user"] else None,
        retriever_literal=_literal(config.get("retriever") or "sentence-transformers:all-MiniLM-L6-v2"),
    )


def _literal(text: str) -> str:
    """A Python string literal for the usage snippets, readable (non-ASCII kept as is)."""
    return json.dumps(text, ensure_ascii=False)


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def build_upload_folder(folder: str | Path, output_dir: str | Path, repo_id: str | None = None) -> Path:
    """Build in `output_dir` exactly the files [`push_rewriter`] would upload for `folder` (no network).

    `folder` is a rewriter saved by [`save_rewriter`], or a plain training output: a full model or a PEFT adapter
    with `adapter_config.json` at the top. Either way it must hold `grape_rewriter.json` (the prompt the model was
    trained with). Weights, tokenizer and metadata are copied (checkpoints, optimizer states and logs are not), an
    adapter is moved to `adapter/` with its base model set to a Hub id, and the pipeline module, prompts and model card
    are written.

    Args:
        folder (`str` or `Path`): The rewriter folder.
        output_dir (`str` or `Path`): An empty or missing folder to build in.
        repo_id (`str`, *optional*): The target repo, named in the model card.

    Returns:
        `Path`: `output_dir`.
    """
    src, out = Path(folder), Path(output_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"Rewriter folder {str(src)!r} does not exist.")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} is not empty; build the upload folder in an empty or new folder.")
    config = RewriterConfig.load(src)
    if config is None:
        raise ValueError(
            f"{str(src)!r} has no {REWRITER_CONFIG_NAME} (the prompt, base model and retriever the rewriter was "
            "trained with); save it with grape_hf.hub.save_rewriter(model, tokenizer, folder, rewriter_config)."
        )
    top_config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else None
    if top_config is not None and top_config.get("model_type") == POINTER_MODEL_TYPE:
        adapter_src = src / top_config.get("adapter_subfolder", ADAPTER_SUBFOLDER)
    elif (src / "adapter_config.json").is_file():
        adapter_src = src
    elif top_config is not None:
        adapter_src = None
    else:
        raise ValueError(
            f"{str(src)!r} is neither a model folder (expected config.json and weights) nor a PEFT adapter folder "
            f"(expected adapter_config.json); it holds {sorted(p.name for p in src.iterdir())[:20]}."
        )
    out.mkdir(parents=True, exist_ok=True)
    prompts = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    if adapter_src is None:
        _copy_matching(src, out, MODEL_FILES)
        add_pipeline_files(out, prompts=prompts)
        base_model = config.base_model
    else:
        _copy_matching(adapter_src, out / ADAPTER_SUBFOLDER, ADAPTER_FILES)
        base_model = _publishable_base(out / ADAPTER_SUBFOLDER / "adapter_config.json", config.base_model)
        add_pipeline_files(out, adapter_subfolder=ADAPTER_SUBFOLDER, base_model=base_model, prompts=prompts)
    if not _copy_matching(src, out, TOKENIZER_FILES):
        raise ValueError(f"{str(src)!r} holds no tokenizer files; save the tokenizer into the rewriter folder too.")
    shutil.copyfile(src / REWRITER_CONFIG_NAME, out / REWRITER_CONFIG_NAME)
    card = build_model_card(config, model_id=repo_id, is_adapter=adapter_src is not None, base_model=base_model)
    card.save(out / "README.md")
    return out


def _copy_matching(src: Path, dst: Path, patterns: tuple[str, ...]) -> list[str]:
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and any(fnmatch(path.name, p) for p in patterns):
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst / path.name)
            copied.append(path.name)
    return copied


def _publishable_base(adapter_config_path: Path, base_model: str | None) -> str:
    """Point an adapter at a Hub id: a path on this machine means nothing to whoever downloads it."""
    adapter_config = json.loads(adapter_config_path.read_text())
    current = adapter_config.get("base_model_name_or_path")
    if _is_hub_id(current):
        return current
    if not _is_hub_id(base_model):
        raise ValueError(
            f"The adapter's base model is {current!r}, a local path; set base_model in {REWRITER_CONFIG_NAME} to the "
            f"base model's Hub id (got {base_model!r}) so that the published adapter can be loaded."
        )
    adapter_config["base_model_name_or_path"] = base_model
    adapter_config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    return base_model


def push_rewriter(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload GRAPE query rewriter",
):
    """Publish a rewriter folder to the Hub: build the upload folder, validate the card, create the repo, upload.

    Args:
        folder (`str` or `Path`): A rewriter folder (see [`build_upload_folder`]).
        repo_id (`str`): The model repo, e.g. `"me/smollm2-grape-multi30k"`.
        private (`bool`, *optional*, defaults to `False`): Create the repo private (an existing repo keeps its
        setting).
        token (`str`, *optional*): A Hub token with write access; defaults to the logged-in one.
        commit_message (`str`, *optional*): The commit message.

    Returns:
        [`~huggingface_hub.CommitInfo`]: The upload commit (`.commit_url`, `.repo_url`).

    Example:
    ```python
    >>> from grape_hf.hub import push_rewriter
    >>> push_rewriter("outputs/rewriter", "me/smollm2-grape-multi30k")  # doctest: +SKIP
    ```
    """
    from huggingface_hub import HfApi, ModelCard

    with tempfile.TemporaryDirectory(prefix="grape-upload-") as tmp:
        out = build_upload_folder(folder, Path(tmp) / "upload", repo_id=repo_id)
        ModelCard.load(out / "README.md").validate()
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=out, commit_message=commit_message, repo_type="model")
