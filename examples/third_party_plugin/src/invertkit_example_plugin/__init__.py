"""An example third-party invertkit plugin.

* :mod:`invertkit_example_plugin.attack` — ``best-of-n``: sample latents of the public prior, keep the ones
  the target is most confident about (black-box, needs ``probs``).
* :mod:`invertkit_example_plugin.defense` — ``temperature``: release ``softmax(log p / T)``.

Nothing is imported here: invertkit loads each module through its own entry point, so a broken or
blocked one never takes the other down.
"""

__version__ = "0.1.0"
