# Launcher rendered by qwenrecipes 0.1.0 for recipe tiny-cpu-official (engine swift); it holds no recipe value.
# Usage, from this folder: python train_swift.py swift_sft.yaml [--resume_from_checkpoint outputs/checkpoint-N]
# It is swift/cli/sft.py (what `swift sft swift_sft.yaml` runs) plus one step: the final weights are saved into
# output_dir. swift itself keeps them only in its last checkpoint-N, and with save_strategy "no" nowhere at all.
import sys

from swift.cli.main import parse_yaml_args
from swift.pipelines.train.sft import SwiftSft


class QwenRecipesSft(SwiftSft):
    def train(self, trainer):
        result = super().train(trainer)  # raises (nothing saved) when training fails or is interrupted
        trainer.save_model(self.args.output_dir)  # rank 0 writes; DeepSpeed/FSDP gather as in HF's save_model
        return result


if __name__ == "__main__":
    argv = sys.argv[1:]
    parse_yaml_args(argv)  # the YAML -> `--key value` expansion `swift sft` does; flags after it win
    QwenRecipesSft(argv).main()
