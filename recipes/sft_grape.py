"""Warm-start a GRAPE query rewriter with TRL's SFTTrainer on (query, rewrite) pairs.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/sft_grape.py --config recipes/SmolLM2-135M-Instruct/sft/config_multi30k_de.yaml

Then continue with GRPO from it: `recipes/grpo_grape.py ... --init_rewriter <its output_dir>`.
"""

from trl import ModelConfig, SFTConfig, TrlParser

from grape_hf.training.configs import SFTScriptArguments
from grape_hf.training.sft import main

if __name__ == "__main__":
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
