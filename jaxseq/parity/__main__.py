"""``python -m jaxseq.parity``: the same as the ``jaxseq-parity`` console script."""
import sys

from jaxseq.parity.report import main

sys.exit(main())
