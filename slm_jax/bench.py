"""`python -m slm_jax.bench --gin_file=gin/bench/cpu_small.gin [--gin.X=Y]`: the step benchmark."""

import sys

from slm_jax import main as main_lib

if __name__ == "__main__":
    sys.exit(main_lib.main(sys.argv[1:] + ["--gin.run.job=bench"]))
