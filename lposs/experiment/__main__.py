"""python -m lposs.experiment paper | mess: the paper's setting or MESS's as a DVC experiment."""

from .paper import main

raise SystemExit(main())
