"""python -m lposs.experiment paper | mess: the paper's setting or MESS's as a DVC experiment (lposs paper | mess)."""

from .paper import main

raise SystemExit(main())
