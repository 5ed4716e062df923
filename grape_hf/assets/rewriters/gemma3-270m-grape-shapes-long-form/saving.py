"""Writing a rewriter folder: the model or adapter, its tokenizer, `grape_rewriter.json`, and the remote code it ships.

Part of a saved folder's remote code itself (a pipeline's `save_pretrained` writes a folder): it imports only the
standard library and its siblings. The format it writes is [`~grape_hf.rewriting.folder`]'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .folder import (
    ADAPTER_SUBFOLDER,
    PIPELINE_MODULE,
    POINTER_MODEL_TYPE,
    PROMPTS_NAME,
    REMOTE_TASK,
    GRAPERewriterConfig,
    RewriterConfig,
    read_json,
)


def save_rewriter_folder(
    model,
    tokenizer,
    folder: str | Path,
    rewriter_config: RewriterConfig | dict | None = None,
    prompts: dict | None = None,
) -> Path:
    """Save a rewriter (full model or PEFT adapter), its tokenizer and metadata so that pipelines can load it.

    Args:
        model: The rewriter LM, or a [`~peft.PeftModel`] (saved as an adapter in `adapter/`).
        tokenizer: Its tokenizer.
        folder (`str` or `Path`): Where to write.
        rewriter_config ([`RewriterConfig`] or `dict`, *optional*): The `grape_rewriter.json` content.
        prompts (`dict`, *optional*): The built-in prompt kinds, copied so that `shift=` works without grape_hf.

    Returns:
        `Path`: The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        model.save_pretrained(folder / ADAPTER_SUBFOLDER)
        base = next(iter(model.peft_config.values())).base_model_name_or_path
        add_pipeline_files(folder, adapter_subfolder=ADAPTER_SUBFOLDER, base_model=base, prompts=prompts)
    else:
        model.save_pretrained(folder)
        add_pipeline_files(folder, prompts=prompts)
    tokenizer.save_pretrained(folder)
    if rewriter_config is not None:
        if isinstance(rewriter_config, dict):
            rewriter_config = RewriterConfig.from_dict(rewriter_config)
        rewriter_config.save(folder)
    return folder


def remote_code_files() -> dict[str, Path]:
    """File name in a saved folder -> the module it is copied from: the pipeline (renamed, so that its name says what
    it is) and the modules it imports, flat, under their own names (their relative imports stay valid)."""
    here = Path(__file__).parent
    siblings = ("folder", "saving", "prompting", "generation", "vision", "devices")
    return {f"{PIPELINE_MODULE}.py": here / "pipeline.py", **{f"{name}.py": here / f"{name}.py" for name in siblings}}


def add_pipeline_files(
    folder: str | Path,
    adapter_subfolder: str | None = None,
    base_model: str | None = None,
    prompts: dict | None = None,
) -> None:
    """Make a saved model or adapter folder loadable by remote code: copy the modules, declare them in `config.json`.

    For a full model, `custom_pipelines` is added to its `config.json`. For an adapter (in `adapter_subfolder`), the
    top `config.json` is a [`GRAPERewriterConfig`] whose `auto_map` names [`GRAPERewriterLoader`] as the loader.
    """
    folder = Path(folder)
    for name, source in remote_code_files().items():
        shutil.copyfile(source, folder / name)
    custom = {
        REMOTE_TASK: {
            "impl": f"{PIPELINE_MODULE}.GRAPERewritePipeline",
            "pt": ["AutoModelForCausalLM"],
            "type": "text",
        }
    }
    config_path = folder / "config.json"
    if adapter_subfolder is not None:
        config = GRAPERewriterConfig(adapter_subfolder=adapter_subfolder, base_model_name_or_path=base_model)
        module = GRAPERewriterConfig.__module__.rpartition(".")[2]  # its file's name, in grape_hf or a saved folder
        config.auto_map = {
            "AutoConfig": f"{module}.GRAPERewriterConfig",
            "AutoModelForCausalLM": f"{module}.GRAPERewriterLoader",
        }
        config.custom_pipelines = custom
        config.save_pretrained(folder)
    else:
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; save the model there first.")
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["custom_pipelines"] = custom
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if prompts is not None:
        (folder / PROMPTS_NAME).write_text(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def refresh_remote_code(folder: str | Path) -> None:
    """Copy the current remote-code modules into a saved rewriter folder again (its weights and metadata stay)."""
    folder = Path(folder)
    config = read_json(folder, "config.json") or {}
    prompts = read_json(folder, PROMPTS_NAME)
    if config.get("model_type") == POINTER_MODEL_TYPE:
        add_pipeline_files(folder, config.get("adapter_subfolder"), config.get("base_model_name_or_path"), prompts)
    else:
        add_pipeline_files(folder, prompts=prompts)
