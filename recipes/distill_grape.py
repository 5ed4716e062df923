"""Rank-filtered self-distillation of a GRAPE query rewriter: sample, keep what the retriever ranks best, fine-tune.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/distill_grape.py --config recipes/SmolLM2-135M-Instruct/distill/config_multi30k_de.yaml

Start it from the base model or an earlier stage (`--init_rewriter <folder>`); GRPO can start from its output.
"""

from trl import ModelConfig, SFTConfig, TrlParser

from grape_hf.training.configs import DistillScriptArguments
from grape_hf.training.distill import main

if __name__ == "__main__":
    parser = TrlParser((DistillScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
