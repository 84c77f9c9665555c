"""Test-suite setup: eight virtual CPU devices, before any JAX backend starts."""

import jax

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')
