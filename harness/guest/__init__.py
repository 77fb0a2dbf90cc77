"""A booted guest, driven: virtme-ng under QEMU, the session on its console, the dataset it
serves, and the fault loop that injects the scenario's faults."""
