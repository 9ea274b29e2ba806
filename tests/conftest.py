import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gemmax import host_memory  # noqa: E402

# The scripts the tests start would each re-execute themselves once to start with this glibc
# tunable (gemmax.host_memory.relaunch_with_tunable); set it for them up front.
if not host_memory.tunable_set():
  os.environ["GLIBC_TUNABLES"] = host_memory.with_tunable(os.environ.get("GLIBC_TUNABLES"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
