"""``python -m lora_ens_rs``: the same as the ``lora-ens-rs`` console script."""

import sys

from lora_ens_rs.cli import main

sys.exit(main())
