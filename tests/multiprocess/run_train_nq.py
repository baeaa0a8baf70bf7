"""Runs examples/train_nq.py's `main` under a launcher and writes what the run was to `<output_dir>/run_<rank>.json`.

Used by tests/test_examples.py: the example's own parser and `main`, plus the facts a test must check (was DeepSpeed
really on, how many processes, which backend), which the example itself does not print.
"""

import importlib.util
import json
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example():
    spec = importlib.util.spec_from_file_location("train_nq", os.path.join(ROOT, "examples", "train_nq.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    if os.environ.get("TRL_SEARCH_SKIP_DS_SHM_OP") == "1":
        # DeepSpeed on CPU JIT-compiles an optional shared-memory allreduce kernel (minutes on 2 cores); without it
        # the collectives go through gloo.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    example = load_example()
    script_args, training_args, model_args = example.make_parser().parse_args_and_config()
    trainer = example.main(script_args, training_args, model_args)
    state = trainer.accelerator.state
    plugin = state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    facts = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": str(state.backend),
        "is_deepspeed_enabled": trainer.is_deepspeed_enabled,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "steps": [entry for entry in trainer.state.log_history if "loss" in entry],
        "saved": sorted(os.listdir(training_args.output_dir)),
    }
    with open(os.path.join(training_args.output_dir, f"run_{trainer.accelerator.process_index}.json"), "w") as handle:
        json.dump(facts, handle)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    # The results are written: skip the interpreter's teardown, where a C++ thread of the distributed stack sometimes
    # aborts the rank ("terminate called without an active exception") after a successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
