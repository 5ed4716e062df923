"""Train a GRAPE query rewriter with TRL's GRPOTrainer.

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml \
        recipes/grpo_grape.py --config recipes/SmolLM2-135M-Instruct/grpo/config_multi30k_de_demo.yaml

Any field of the YAML can be overridden on the command line (`--max_steps 50`).
"""

from trl import ModelConfig, TrlParser

from grape_hf import GRAPEScriptArguments
from grape_hf.training.configs import GRAPEConfig
from grape_hf.training.grpo import main

if __name__ == "__main__":
    parser = TrlParser((GRAPEScriptArguments, GRAPEConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
