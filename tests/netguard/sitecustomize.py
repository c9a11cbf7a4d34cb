"""`./reproduce.sh test` puts this folder on PYTHONPATH with IRM_BLOCK_NETWORK=1, so Python runs
this at the start of every process it launches: the network is blocked there too."""

import os

if os.environ.get("IRM_BLOCK_NETWORK") == "1":
    from netguard import block_network

    block_network()
