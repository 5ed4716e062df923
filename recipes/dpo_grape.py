"""Rank preference optimisation of a GRAPE query rewriter: sample, pair the rewrites by the retriever's ranking, DPO.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/dpo_grape.py --config recipes/SmolLM2-135M-Instruct/dpo/config_multi30k_de.yaml

Start it from an earlier stage (`--init_rewriter <folder>`, e.g. the self-distillation rewriter) or the base model.
"""

from trl import DPOConfig, ModelConfig, TrlParser

from grape_hf.training.configs import PreferenceScriptArguments
from grape_hf.training.dpo import main

if __name__ == "__main__":
    parser = TrlParser((PreferenceScriptArguments, DPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
