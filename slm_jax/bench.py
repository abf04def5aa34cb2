"""`python -m slm_jax.bench --gin_file=gin/bench/cpu_small.gin [--gin.X=Y]`: the step benchmark."""

import sys

from slm_jax import main as main_lib

USAGE = ("usage: python -m slm_jax.bench [--gin_file=FILE.gin ...] [--gin.NAME=VALUE ...]\n"
         "  Times CLM, SLM-online and SLM-offline train steps (and token selection) and prints\n"
         "  one JSON line each; e.g. python -m slm_jax.bench --gin_file=gin/bench/cpu_small.gin")


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE)
        return 0
    return main_lib.main(argv + ["--gin.run.job=bench"])


if __name__ == "__main__":
    from slm_jax import console
    console.filter_native_stderr()
    sys.exit(main(sys.argv[1:]))
